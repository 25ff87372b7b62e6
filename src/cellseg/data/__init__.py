"""CellMap data layer: the embedded synthetic demo generator and (later) readers, datasplit and loaders.

Kept import-light on purpose: ``cellseg make-demo-data`` and ``cellseg --help`` must not pay for
torch. Sub-modules import their heavy dependencies themselves.
"""

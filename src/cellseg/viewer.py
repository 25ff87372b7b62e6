"""``cellseg view``: a prediction store and its EM in neuroglancer, served from this machine.

``cellseg view --prediction PRED.zarr`` serves the prediction store and the EM it was predicted from over
local HTTP (with CORS headers, so the neuroglancer web app in a browser may fetch from it) and
prints a neuroglancer link whose state shows the EM as an image layer, each class's mask as a
segmentation layer and each class's probabilities as an image layer (hidden until switched on),
each class in its own colour (:data:`cellseg.palette.COLOURS`, the figures' colours too); the
groups (whole organelles) a store holds (:mod:`cellseg.prediction_groups`) follow the classes
alike, in the palette's group colours. The
main panel shows the y-x imaging plane (dimensions ordered ``x, y, z``).
Every layer is an OME-NGFF multiscale group whose ``scale`` and ``translation`` are in nm, so
neuroglancer places them all in the same world coordinates: the masks lie on the EM voxels
they were predicted from. The state is also written beside the store
(``PRED.neuroglancer.json``, atomically), e.g. to paste into neuroglancer's state editor.

The server maps ``/prediction/…`` to the prediction store and ``/em/…`` to the EM's store and
nothing else; it listens on ``127.0.0.1`` unless ``--host`` says otherwise (on a cluster node,
forward the port with ``ssh -L``). Nothing here needs the network beyond the local socket.
"""

from __future__ import annotations

import argparse
import http.server
import json
import sys
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellseg.classes import CLASSES
from cellseg.errors import CellsegError
from cellseg.io import write_json_atomic
from cellseg.palette import colour
from cellseg.trained_classes import stored_classes
from cellseg.voxels import Vec3, as_vec3

NEUROGLANCER_APP = "https://neuroglancer-demo.appspot.com/"
"""The neuroglancer web app the printed link opens (any instance reads the same state)."""
PREDICTION_ROUTE = "prediction"
EM_ROUTE = "em"


@dataclass(frozen=True)
class ViewSources:
    """What ``cellseg view`` shows: the prediction store and the EM's multiscale group.

    Attributes:
        prediction: the prediction store (``cellseg predict --out``).
        em_store: the EM's zarr store.
        em_group: the EM multiscale group inside it, e.g. ``recon-1/em/fibsem-uint8``.
        resolution_nm: the prediction's ``(z, y, x)`` voxel size (nm).
        centre_nm: ``(z, y, x)`` centre of the predicted region (nm), where the view opens.
        classes: the classes the store holds (a model's untrained classes have no layers).
        groups: the groups the store holds maps of (its settings' ``groups``; none in a store
            written without them).
    """

    prediction: Path
    em_store: Path
    em_group: str
    resolution_nm: Vec3
    centre_nm: tuple[float, float, float]
    classes: tuple[str, ...] = CLASSES
    groups: tuple[str, ...] = ()


def read_sources(prediction: Path | str, em: str | None = None) -> ViewSources:
    """The sources of a prediction store: its EM from the store's own record unless ``em``
    (``STORE.zarr/GROUP``) is given.

    Raises:
        CellsegError: ``prediction`` is not a prediction store of cellseg's, or the EM is gone.
    """
    from cellseg.prediction_groups import GROUPS_KEY
    from cellseg.prediction_plan import split_store_path

    prediction = Path(prediction)
    try:
        attrs = json.loads((prediction / ".zattrs").read_text())
        spec = attrs["cellseg"]["prediction"]
        r = as_vec3(spec["resolution_nm"])
        translation, shape = spec["translation_nm"], spec["shape"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CellsegError(
            f"{prediction}: not a prediction store of cellseg predict ({error.__class__.__name__}"
            f": {error}); pass the --out of cellseg predict"
        ) from None
    em_store, em_group = split_store_path(em or spec["em"])
    if not (em_store / em_group).is_dir():
        raise CellsegError(
            f"{em_store / em_group}: the EM of {prediction} is not there; pass --em "
            "STORE.zarr/GROUP"
        )
    centre = tuple(
        float(t) + (n - 1) * r_i / 2 for t, n, r_i in zip(translation, shape, r, strict=True)
    )
    classes, groups = stored_classes(spec), tuple(spec.get(GROUPS_KEY, ()))
    return ViewSources(prediction, em_store, em_group, r, centre, classes, groups)  # type: ignore[arg-type]


DISPLAY_AXES: tuple[str, str, str] = ("x", "y", "z")
"""The state's dimension order. Neuroglancer's main (top-left) panel shows the plane of the first
two, so ``x, y`` puts the y-x imaging plane of FIB-SEM there, the way the EM was acquired and is
annotated; the other panels show x-z and y-z. The stores' own axes stay ``z, y, x``: neuroglancer
matches the dimensions by name."""

PROBABILITY_SHADER = """#uicontrol vec3 colour color(default="{colour}")
#uicontrol invlerp level
void main() {{
  emitRGBA(vec4(colour, level()));
}}
"""
"""A probability layer drawn in its class's colour, transparent at probability 0 and opaque at 1
(``level`` maps the stored dtype's range, e.g. 0-255 for uint8; its range may be changed in the
layer's panel)."""


def neuroglancer_state(sources: ViewSources, base_url: str) -> dict[str, Any]:
    """The neuroglancer state (JSON) of a prediction and its EM served at ``base_url``.

    Dimensions ``x, y, z`` (:data:`DISPLAY_AXES`) in 1 nm units, so the main panel shows the y-x
    imaging plane; the view opens at the predicted region's centre, zoomed so a screen pixel is
    one prediction voxel of the y-x plane (its finer spacing; the 3D view spans 1024 of the
    coarsest). Layers: ``EM`` (image), then per class the store holds, and then per group,
    ``masks/{name}`` (segmentation, segment 1 shown in the name's colour of
    :data:`cellseg.palette.COLOURS`) and ``probabilities/{name}`` (image in the same colour,
    hidden). Sources are ``zarr://`` URLs of the multiscale groups.
    """
    base = base_url.rstrip("/")
    em_url = f"zarr://{base}/{EM_ROUTE}/{sources.em_group.strip('/')}"
    layers: list[dict[str, Any]] = [{"type": "image", "name": "EM", "source": em_url}]
    names = (*sources.classes, *sources.groups)
    for name in names:
        layers.append(
            {
                "type": "segmentation",
                "name": f"masks/{name}",
                "source": f"zarr://{base}/{PREDICTION_ROUTE}/masks/{name}",
                "segments": ["1"],
                "segmentColors": {"1": colour(name)},
                # one mask on (14 at once hide the EM): nuc, or the last class the store holds
                "visible": name == ("nuc" if "nuc" in sources.classes else sources.classes[-1]),
            }
        )
    for name in names:
        layers.append(
            {
                "type": "image",
                "name": f"probabilities/{name}",
                "source": f"zarr://{base}/{PREDICTION_ROUTE}/probabilities/{name}",
                "shader": PROBABILITY_SHADER.format(colour=colour(name)),
                "visible": False,
            }
        )
    centre = dict(zip(("z", "y", "x"), sources.centre_nm, strict=True))
    return {
        "dimensions": {axis: [1e-9, "m"] for axis in DISPLAY_AXES},
        "position": [centre[axis] for axis in DISPLAY_AXES],
        "crossSectionScale": min(sources.resolution_nm[1:]),
        "projectionScale": 1024 * max(sources.resolution_nm),
        "layers": layers,
        "selectedLayer": {"layer": "EM"},
        "layout": "4panel",
    }


def neuroglancer_link(state: Mapping[str, Any], app: str = NEUROGLANCER_APP) -> str:
    """The URL that opens ``state`` in the neuroglancer web app ``app``."""
    text = json.dumps(state, separators=(",", ":"))
    return f"{app.rstrip('/')}/#!{urllib.parse.quote(text, safe='')}"


def state_path(prediction: Path | str) -> Path:
    """Where the state is written: ``PRED.neuroglancer.json`` beside ``PRED.zarr``."""
    prediction = Path(prediction)
    return prediction.with_name(f"{prediction.stem}.neuroglancer.json")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files below a few named roots (``/{route}/{path}``), with CORS headers."""

    roots: Mapping[str, Path] = {}

    def translate_path(self, path: str) -> str:
        parts = [p for p in urllib.parse.unquote(urllib.parse.urlsplit(path).path).split("/") if p]
        if not parts or parts[0] not in self.roots or any(p in (".", "..") for p in parts):
            return str(Path("/nonexistent-cellseg-route"))
        return str(self.roots[parts[0]].joinpath(*parts[1:]))

    def list_directory(self, path: Any) -> None:
        self.send_error(404, "no directory listings")
        return None

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "*")
        super().end_headers()

    def do_OPTIONS(self) -> None:
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # neuroglancer asks for hundreds of chunks; a log line each would drown the link


def serve(
    roots: Mapping[str, Path], host: str = "127.0.0.1", port: int = 0
) -> http.server.ThreadingHTTPServer:
    """Start serving ``/{route}/…`` from ``roots[route]`` on a background thread.

    ``port`` 0 picks a free port (``server.server_address`` says which). Stop it with
    ``server.shutdown()`` and ``server.server_close()``.
    """
    handler = type("Handler", (_Handler,), {"roots": {k: Path(v) for k, v in roots.items()}})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def view(
    prediction: Path | str,
    em: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    app: str = NEUROGLANCER_APP,
) -> tuple[http.server.ThreadingHTTPServer, dict[str, Any], str]:
    """Serve ``prediction`` and its EM, write the state beside the store; return the running
    server, the state and the link."""
    sources = read_sources(prediction, em)
    server = serve({PREDICTION_ROUTE: sources.prediction, EM_ROUTE: sources.em_store}, host, port)
    bound_host, bound_port = server.server_address[:2]
    state = neuroglancer_state(sources, f"http://{bound_host}:{bound_port}")
    write_json_atomic(state_path(sources.prediction), state)
    return server, state, neuroglancer_link(state, app)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cellseg view``."""
    parser = subparsers.add_parser(
        "view",
        help="show a prediction store and its EM in neuroglancer (served locally)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--prediction", type=Path, required=True, help="the --out store of cellseg predict"
    )
    parser.add_argument(
        "--em", default=None, help="STORE.zarr/GROUP of the EM (default: the one predicted from)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument(
        "--neuroglancer-url", default=NEUROGLANCER_APP, help="the neuroglancer web app to link to"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    server, _, link = view(args.prediction, args.em, args.host, args.port, args.neuroglancer_url)
    print(f"state: {state_path(args.prediction)}", file=sys.stderr)
    print(link, flush=True)
    print("serving until interrupted (Ctrl-C)", file=sys.stderr, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    return 0

"""Rendering speed: faceclip.render vs DEODR on the same meshes, cameras and shading.

Renders vertex-coloured, lit, antialiased images (ours: SH ambient + directional light,
silhouette antialiasing, back-face culling; DEODR: ambient + directional light, edge-overdraw
antialiasing sigma=1, back-face culling) of the ICT face region, the full ICT model and a
~70k-triangle sphere, at 224x224 and 512x512, batch 1 and 8, forward and forward+backward
(loss = squared difference to a target image; gradients wrt vertices and colours). DEODR
renders the batch one image after another. Times are medians over ``--runs`` runs after a
warm-up, in milliseconds per batch; ``ratio`` = DEODR / ours.

Usage::

    python benchmarks/render.py [--runs 5] [--threads N] [--device cpu|cuda] [--skip-deodr]

The render backend follows ``FACECLIP_RENDER_BACKEND`` (``auto``: compiled Numba kernels on CPU
when numba is installed; ``torch``: the eager PyTorch path). The ICT rows need the model installed (``faceclip models install ict``) and are skipped
otherwise. Peak memory (RSS) of one batch-8 224x224 forward+backward of the 70k mesh is
measured in a fresh subprocess. The last line is ``speedup_vs_deodr_70k_224_b8_fwdbwd: X``
(with ``--skip-deodr``: ``render_70k_224_b8_fwdbwd_ms: X``). Without DEODR installed and without
``--skip-deodr`` it exits non-zero and says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from faceclip.render import MeshRenderer, PerspectiveCamera, sh_directional
from faceclip.render.synthetic import sphere_with_triangles

LIGHT_DIR_VIEW = (0.0, 0.5, 1.0)
AMBIENT, DIFFUSE = 0.4, 0.6


def load_meshes() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (vertices (V, 3) mm, triangles (F, 3))."""
    meshes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    try:
        from faceclip.facemodel import load_face_model

        for name, geometry in (("ict_face", "face"), ("ict_full", "full")):
            m = load_face_model("ict", geometry=geometry)
            meshes[name] = (m.mean_mm.float(), m.triangles.long())
    except Exception as exc:  # model not installed: report and go on with the synthetic mesh
        print(f"# ICT model unavailable ({type(exc).__name__}: {exc}); ICT rows skipped", file=sys.stderr)
    v, f, _ = sphere_with_triangles(70000, radius_mm=80.0)
    meshes["sphere_70k"] = (v, f)
    return meshes


def frontal_camera(vertices: torch.Tensor, size: int, batch: int) -> PerspectiveCamera:
    """Frontal camera at 600 mm framing the mesh's x-y bounding box in 90% of the image."""
    lo, hi = vertices.min(0).values, vertices.max(0).values
    centre = ((lo + hi) / 2).tolist()
    focal = 0.9 * size * 600.0 / float((hi - lo)[:2].max())
    return PerspectiveCamera.frontal(600.0, focal, (size, size), batch_size=batch, center_mm=centre)


def median_ms(fn: Callable[[], None], runs: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def ours_fn(verts: torch.Tensor, tris: torch.Tensor, size: int, batch: int, backward: bool,
            device: str) -> Callable[[], None]:
    renderer = MeshRenderer(tris, cull_backfaces=True, antialiased=True).to(device)
    cam = frontal_camera(verts, size, batch).to(device)
    v = verts.to(device).unsqueeze(0).repeat(batch, 1, 1)
    colors = (0.5 + 0.3 * torch.sin(verts / 20.0)).to(device).unsqueeze(0).repeat(batch, 1, 1)
    sh = sh_directional(LIGHT_DIR_VIEW, AMBIENT, DIFFUSE, batch_size=batch, device=device)
    target = torch.full((batch, size, size, 3), 0.5, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run() -> None:
        vv = v.detach().requires_grad_(backward)
        cc = colors.detach().requires_grad_(backward)
        with torch.set_grad_enabled(backward):
            img = renderer(vv, cam, vertex_colors=cc, sh_coeffs=sh).image
            if backward:
                ((img - target) ** 2).sum().backward()
        sync()

    return run


def deodr_fn(verts: torch.Tensor, tris: torch.Tensor, size: int, batch: int,
             backward: bool) -> Callable[[], None] | None:
    try:
        from deodr.differentiable_renderer import Camera, Scene3D
        from deodr.triangulated_mesh import ColoredTriMesh
    except ImportError:
        return None
    V = verts.double().numpy()
    colors = 0.5 + 0.3 * np.sin(V / 20.0)
    try:
        mesh = ColoredTriMesh(tris.numpy().astype(np.int64), V, colors=colors)
    except BaseException:  # DEODR checks the orientation through the volume: open meshes may fail
        mesh = ColoredTriMesh(tris.numpy().astype(np.int64), V, colors=colors, clockwise=True)
    scene = Scene3D(sigma=1.0, integer_pixel_centers=False)
    scene.set_mesh(mesh)
    scene.set_background_color(np.zeros(3))
    # DEODR: luminosity = ambient + max(0, -n . light_directional) with n in world space;
    # the frontal view frame equals model space here.
    d = np.array(LIGHT_DIR_VIEW) / np.linalg.norm(LIGHT_DIR_VIEW)
    scene.set_light(light_directional=-DIFFUSE * d, light_ambient=AMBIENT)
    cam_t = frontal_camera(verts, size, 1)
    K = cam_t.K[0].double().numpy()
    ext = np.column_stack([cam_t.R[0].double().numpy(), cam_t.t[0].double().numpy()])
    camera = Camera(extrinsic=ext, intrinsic=K, width=size, height=size)
    target = np.full((size, size, 3), 0.5)

    def run() -> None:
        for _ in range(batch):
            img = scene.render(camera)
            if backward:
                scene.clear_gradients()
                scene.render_backward(2 * (img - target))

    return run


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB (ru_maxrss survives exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024.0
    return float("nan")


def memory_probe(size: int = 224, batch: int = 8) -> None:
    """Print RSS before and peak RSS after batch-8 224 forward+backward of the 70k mesh (MiB)."""
    v, f, _ = sphere_with_triangles(70000, radius_mm=80.0)
    fn = ours_fn(v, f, size, batch, True, "cpu")
    base = _status_mib("VmRSS")
    fn()
    fn()
    print(f"{base:.1f} {_status_mib('VmHWM'):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--skip-deodr", action="store_true")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc malloc keeps freed memory (faceclip.render.perf); affects both renderers")
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        from faceclip.render.perf import keep_freed_memory

        keep_freed_memory()
    if args.memory_probe:
        memory_probe()
        return

    if not args.skip_deodr and importlib.util.find_spec("deodr") is None:
        sys.exit("benchmarks/render.py: the reference renderer DEODR is not installed, so the speed-up "
                 "cannot be measured. Install the test environment (README set-up command (b), which "
                 "pins deodr==0.2.3), or pass --skip-deodr to time only our renderer.")
    meshes = load_meshes()
    from faceclip.render import backend

    t0 = time.perf_counter()
    compiled = args.device == "cpu" and backend.use_numba(torch.zeros(1))
    if compiled:  # load (or compile, first time on a machine) the kernels before timing
        v, f, _ = sphere_with_triangles(2000, radius_mm=80.0)
        ours_fn(v, f, 64, 2, True, "cpu")()
    print(f"# device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} runs={args.runs} "
          f"load_avg_1min={__import__('os').getloadavg()[0]:.2f} render_backend={backend.get_backend()}"
          f"{' (numba kernels, first render %.1f s)' % (time.perf_counter() - t0) if compiled else ' (eager torch)'}")
    print(f"{'mesh':<11} {'tris':>6} {'size':>4} {'B':>2} {'pass':<7} {'ours_ms':>9} {'deodr_ms':>9} {'ratio':>6}")
    headline = float("nan")
    ours_headline_ms = float("nan")
    for name, (verts, tris) in meshes.items():
        for size in (224, 512):
            for batch in (1, 8):
                for backward in (False, True):
                    mode = "fwdbwd" if backward else "fwd"
                    ours = median_ms(ours_fn(verts, tris, size, batch, backward, args.device), args.runs)
                    ref = None if args.skip_deodr else deodr_fn(verts, tris, size, batch, backward)
                    deodr_ms = median_ms(ref, args.runs) if ref is not None else float("nan")
                    ratio = deodr_ms / ours
                    print(f"{name:<11} {tris.shape[0]:>6} {size:>4} {batch:>2} {mode:<7} "
                          f"{ours:>9.1f} {deodr_ms:>9.1f} {ratio:>6.2f}", flush=True)
                    if name == "sphere_70k" and size == 224 and batch == 8 and backward:
                        headline, ours_headline_ms = ratio, ours
    if args.device == "cpu":
        res = subprocess.run([sys.executable, __file__, "--memory-probe"]
                             + (["--threads", str(args.threads)] if args.threads else []),
                             capture_output=True, text=True, check=True)
        base, peak = (float(x) for x in res.stdout.split())
        print(f"# peak RSS, sphere_70k 224x224 batch 8 fwd+bwd: {peak:.0f} MiB "
              f"(process baseline before rendering {base:.0f} MiB, rendering adds {peak - base:.0f} MiB)")
    if args.skip_deodr:
        print(f"render_70k_224_b8_fwdbwd_ms: {ours_headline_ms:.1f}")
    elif not math.isfinite(headline):
        sys.exit(f"benchmarks/render.py: the headline ratio is {headline} (DEODR failed?)")
    else:
        print(f"speedup_vs_deodr_70k_224_b8_fwdbwd: {headline:.2f}")


if __name__ == "__main__":
    main()

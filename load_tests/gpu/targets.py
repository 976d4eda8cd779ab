"""The issue's two performance targets, judged from what the check measured.

- The server keeps up with bare ONNX Runtime: its best images/s for the model in any fp32 configuration is at
  least 0.8 of bare ONNX Runtime's best fp32 images/s (any batch size, any way of running), both on this GPU.
- fp16 pays: bare ONNX Runtime with IO binding runs batches of 64 at least 1.5 times as fast in fp16 as in fp32.

Both are judged on catsdogs (compute-bound: where a GPU and half precision matter), or on the first model
measured when catsdogs was not (the CPU dry run), and say which.

Two more come from the front-end sweep under h2load (mnist_net single-image ModelInfer, 64 in flight), the
targets of the front-end/engine split, judged at the front-end count that answered most:
- front-ends pay: at least 2 times the single-process server's requests/s;
- front-ends cost little: at least 0.8 of a bare grpc.aio server with as many processes.
"""

from __future__ import annotations

from load_tests.gpu.results import CheckResult, Target

SERVER_SHARE = 0.8
FP16_SPEEDUP = 1.5
FP16_BATCH = 64
PREFERRED_MODEL = "catsdogs"
FRONTENDS_SPEEDUP = 2.0
FRONTENDS_BARE_SHARE = 0.8


def evaluate(result: CheckResult) -> list[Target]:
    measured = list(dict.fromkeys(point.model for point in result.bare))
    model = PREFERRED_MODEL if PREFERRED_MODEL in measured or not measured else measured[0]
    return [_server_share(result, model), _fp16_speedup(result, model), *_frontend_targets(result)]


def _frontend_targets(result: CheckResult) -> list[Target]:
    scaling = f"front-ends >= {FRONTENDS_SPEEDUP} x the single-process server (mnist_net, h2load, best count)"
    share = f"front-ends >= {FRONTENDS_BARE_SHARE} x bare grpc.aio with as many processes (at that count)"
    sweep = result.frontend_sweep
    medians = [m for m in (sweep or {}).get("medians", []) if m["frontends"] > 0]
    if not medians:
        return [
            Target(name, None, threshold, None, "not measured")
            for name, threshold in ((scaling, FRONTENDS_SPEEDUP), (share, FRONTENDS_BARE_SHARE))
        ]
    best = max(medians, key=lambda m: m["cnnserve"])
    where = f"{best['frontends']} front-ends: {best['cnnserve']:,.0f} requests/s"
    relative = best["relative_to_single_process"]
    return [
        Target(
            scaling,
            relative,
            FRONTENDS_SPEEDUP,
            None if relative is None else relative >= FRONTENDS_SPEEDUP,
            f"{where}, single process measured beside it" if relative is not None else "no single-process run",
        ),
        Target(
            share,
            best["ratio"],
            FRONTENDS_BARE_SHARE,
            best["ratio"] >= FRONTENDS_BARE_SHARE,
            f"{where} vs bare {best['bare']:,.0f} ({best['processes']} processes)",
        ),
    ]


def _server_share(result: CheckResult, model: str) -> Target:
    name = f"server >= {SERVER_SHARE} x bare ONNX Runtime ({model}, fp32, best of each)"
    bare = [p for p in result.bare if p.model == model and p.variant.startswith("fp32")]
    served = [m for m in result.server_points if m.model == model and m.configuration != "fp16"]
    if not bare or not served:
        return Target(name, None, SERVER_SHARE, None, "not measured")
    best_bare = max(bare, key=lambda p: p.images_per_second)
    best_served = max(served, key=lambda m: m.point.images_per_second)
    share = best_served.point.images_per_second / best_bare.images_per_second
    detail = (
        f"server {best_served.point.images_per_second:,.0f} images/s ({best_served.configuration}, "
        f"{best_served.request}) vs bare {best_bare.images_per_second:,.0f} images/s ({best_bare.variant}, "
        f"batch {best_bare.batch_size})"
    )
    return Target(name, share, SERVER_SHARE, share >= SERVER_SHARE, detail)


def _fp16_speedup(result: CheckResult, model: str) -> Target:
    name = f"fp16 >= {FP16_SPEEDUP} x fp32, bare with IO binding at batch {FP16_BATCH} ({model})"
    found = {
        p.variant: p.images_per_second
        for p in result.bare
        if p.model == model and p.batch_size == FP16_BATCH and p.variant.endswith("io_binding")
    }
    fp32, fp16 = found.get("fp32 io_binding"), found.get("fp16 io_binding")
    if not fp32 or not fp16:
        return Target(name, None, FP16_SPEEDUP, None, "not measured")
    speedup = fp16 / fp32
    detail = f"fp16 {fp16:,.0f} images/s vs fp32 {fp32:,.0f} images/s"
    return Target(name, speedup, FP16_SPEEDUP, speedup >= FP16_SPEEDUP, detail)

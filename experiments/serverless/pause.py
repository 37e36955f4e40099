"""Live migration vs restart, measured: ``python -m experiments.serverless.pause [--model tiny-llama] [--trials 5]``.

Two fresh instances load the same checkpoint; one request is decoded without migration (the reference), then
again with a live migration (rounds of re-prefill while the source decodes), then with a restart from scratch
(source stops, destination re-prefills everything). Prints whether the tokens equal the reference and each
run's pause (largest gap between consecutive tokens), median over trials.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from harness.checkpoints import CheckpointStore
from harness.config import option_dict
from harness.executors.local import LocalExecutor
from harness.executors.workers import start_worker
from schedulers.clock import WallClock
from schedulers.real.instance import prompt_tokens
from schedulers.real.serving import Calls, Serving

LOADER = {"_target_": "loaders.native.loader.NativeLoader", "dram_dir": None, "threads": 1}

def drive(src: Any, rid: int, prompt: list[int], output_tokens: int, chunk: int = 1, dest: Any = None,
          switch_at: int = 0, how: str = "migrate", stop_tokens: int = 4, max_rounds: int = 8,
          timeout_s: float = 60.0) -> Serving:
    """Serve one request on ``src`` by itself (no controller), on a wall clock; once ``switch_at`` tokens are out,
    live-migrate it to ``dest`` (``how="migrate"``) or restart it there (``"restart"``). For measurements and tests
    of migration; raises ``RuntimeError`` with the reason if a call failed."""
    clock = WallClock()
    outcome: list[str] = []
    moved = [dest is None]

    class Events:
        def first_token(self, t: float) -> None:
            pass

        def done(self, t: float) -> None:
            outcome.append("")

        def failed(self, reason: str) -> None:
            outcome.append(reason)

        def stop_source(self, new_tokens: int) -> None:
            serving.switch(dest)

        def destination_failed(self, reason: str) -> None:
            outcome.append(reason)

    serving = Serving(Calls(clock, timeout_s), src, rid, prompt, output_tokens, chunk, Events())

    def over() -> bool:
        if not moved[0] and len(serving.tokens) >= switch_at and not serving.switching:
            moved[0] = True
            if how == "migrate":
                serving.migrate(dest, stop_tokens, max_rounds)
            else:
                serving.switch(dest)
        return bool(outcome)

    clock.start()
    serving.start()
    clock.run(over, idle_s=0.01)
    if outcome[0]:
        raise RuntimeError(outcome[0])
    return serving



def measure(model: str = "tiny-llama", trials: int = 5, prompt_len: int = 64, out: int = 60, chunk: int = 1,
            stop_tokens: int = 4) -> dict[str, Any]:
    from hydra.utils import instantiate

    cfg = option_dict("model", model)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = CheckpointStore(Path(tmp)).ensure(instantiate(cfg), "fp32", "native", 0, progress=False)
        ws = [start_worker(LocalExecutor(), "schedulers.real.instance:ModelInstance", {"model": cfg},
                           name=f"pause{k}") for k in range(2)]
        try:
            for w in ws:
                w.call("load", str(ckpt.path), LOADER, timeout_s=120)
            res: dict[str, list[float]] = {"unmigrated": [], "migrate": [], "restart": []}
            equal = {"migrate": True, "restart": True}
            for t in range(trials):
                prompt = prompt_tokens(t, prompt_len, 1000)
                ref = drive(ws[0], 3 * t, prompt, out, chunk)
                res["unmigrated"].append(ref.max_gap_s())
                for k, how in enumerate(("migrate", "restart")):
                    s = drive(ws[0], 3 * t + 1 + k, prompt, out, chunk, ws[1], out // 3, how, stop_tokens)
                    equal[how] = equal[how] and s.tokens == ref.tokens
                    res[how].append(s.max_gap_s())
        finally:
            for w in ws:
                w.close()
    return {"tokens_equal": equal, "max_gap_ms_median": {k: 1e3 * statistics.median(v) for k, v in res.items()},
            "trials": trials, "prompt_tokens": prompt_len, "output_tokens": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    print(measure(args.model, args.trials))


if __name__ == "__main__":
    main()

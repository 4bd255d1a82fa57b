"""The static loop's verification forward on this device: each length t = 1..17 replayed from its CUDA graph against
the same forward run eagerly on Transformers' dynamic cache (Transformers' loop), on a 256-token context. Prints
one JSON line: per t, the median milliseconds of each and how far the logits differ (max |diff|, argmax agreement).
Usage: python static_probe.py [dtype]"""

import json
import statistics
import sys
import time

import torch
from transformers import DynamicCache

from dspark_hf import load_target
from dspark_hf.static_loop import StaticTarget


def median_ms(run, repeats: int = 15) -> float:
    run()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def main() -> None:
    target, _ = load_target(None, device="cuda", dtype=sys.argv[1] if len(sys.argv) > 1 else None)
    context, longest = 256, 17
    vocab = target.config.vocab_size
    ids = torch.randint(vocab, (1, context + longest), generator=torch.Generator().manual_seed(0)).cuda()
    static = StaticTarget.for_target(target, context + longest)
    kw = static.cache_kw
    dynamic = DynamicCache(config=target.config)
    target(ids[:, :context], use_cache=True, **{kw: dynamic})
    static.forward(ids[:, :context], 0)
    rows = []
    for t in range(1, longest + 1):
        new = ids[:, context : context + t]

        def eager(new=new):
            out = target(new, use_cache=True, output_hidden_states=True, **{kw: dynamic})
            dynamic.crop(context)
            return out.logits[0]

        def replay(new=new):
            return static.forward(new, context)[0]

        ref, got = eager().float(), replay().float().clone()
        agree = bool((ref.argmax(-1) == got.argmax(-1)).all())
        diff = float((ref - got).abs().max())
        rows.append({"tokens": t, "eager_ms": median_ms(eager), "graph_ms": median_ms(replay), "max_abs_diff": diff,
                     "argmax_agree": agree})  # fmt: skip
        print(rows[-1], file=sys.stderr)
    print(json.dumps({"dtype": str(target.dtype), "context": context, "rows": rows}))


if __name__ == "__main__":
    main()

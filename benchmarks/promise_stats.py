"""Promise statistics (the paper's Table 4) and coverage for full-size models, random weights.

    python -m benchmarks.promise_stats [--models vgg16,vit_b_16,roberta-large,flan-t5-large]

Prints one markdown row per model: nodes, coverage, promises, generating nodes, internal nodes,
delta, rho, conservation, and the paper's row next to it. Text models get 16 tokens (T5's decoder 4),
images 224x224, as in ../shared/reference/graph_sizes.md.
"""
from __future__ import annotations

import argparse
import time

import torch

import dynlrp

PAPER = {  # promises, internal nodes, delta, rho, total nodes (Table 4)
    "roberta-large": (243, 48, 438, 0.166, 1465), "flan-t5-large": (798, 348, 980, 0.140, 5713),
    "vit_b_16": (224, 27, 227, 0.288, 779), "vgg16": (32, 0, 32, 0.356, 90),
}


def build(name: str):
    ids = torch.randint(5, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    if name in ("vgg16", "vit_b_16"):
        import torchvision

        return getattr(torchvision.models, name)().eval(), (torch.randn(1, 3, 224, 224),), {}
    import transformers as tf

    if name == "roberta-large":
        cfg = tf.RobertaConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                               vocab_size=50265, max_position_embeddings=514, type_vocab_size=1)
        return tf.RobertaForMaskedLM(cfg).eval(), (ids,), {}
    if name == "flan-t5-large":
        cfg = tf.T5Config(d_model=1024, d_ff=2816, d_kv=64, num_heads=16, num_layers=24, num_decoder_layers=24,
                          vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
        return tf.T5ForConditionalGeneration(cfg).eval(), (ids,), {"decoder_input_ids": ids[:, :4]}
    raise ValueError(f"unknown model {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="vgg16,vit_b_16,roberta-large,flan-t5-large")
    parser.add_argument("--rules", default="attnlrp")
    args = parser.parse_args()
    print("| model | nodes | coverage | promises | generating | internal | delta | rho | unexplained | s |"
          " paper (promises, internal, delta, rho, nodes) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model, margs, kwargs = build(name)
        start = time.perf_counter()
        report = dynlrp.audit(model, *margs, rules=args.rules, **kwargs)
        p = report.promises or {}
        unexplained = (report.conservation or {}).get("unexplained", float("nan"))
        print(f"| {name} | {report.nodes} | {report.coverage:.4f} | {p.get('promises')} | {p.get('generating_nodes')}"
              f" | {p.get('internal_nodes')} | {p.get('delta')} | {p.get('rho', 0):.3f} | {unexplained:.1e}"
              f" | {time.perf_counter() - start:.1f} | {PAPER.get(name)} |", flush=True)
        if report.needs_record:
            print(f"|   needs record(): {report.needs_record[:150]} |")


if __name__ == "__main__":
    main()

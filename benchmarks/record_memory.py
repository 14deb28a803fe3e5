"""What ``dynlrp.record()`` keeps, in bytes, on full-size language models (random weights, CPU).

    python -m benchmarks.record_memory [--models gpt2,llama_3_2_1b] [--tokens 64] [--attn eager,sdpa]

For each model, attention implementation and parameter state (trainable / frozen), one forward
inside ``record()``; reported:

- ``kept``: bytes of the distinct storages the recording references (``Recording.nbytes``);
- ``exclusive``: of those, the bytes that nothing else holds, i.e. not a parameter or buffer and
  not a tensor some graph node saved for its backward: the memory ``record()`` really adds;
- ``values``: how many operands / calls it kept; ``activations``: the bytes of a copy of every node
  output (``record(outputs=True)``, the cost of keeping everything) for scale;
- ``saved``: bytes of the graph's own saved tensors (what autograd keeps anyway), distinct storages.
"""
from __future__ import annotations

import argparse
import gc

import torch

import dynlrp
from dynlrp.graph import Graph


def _storages(tensors) -> dict[int, int]:
    found = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            found[storage.data_ptr()] = storage.nbytes()
    return found


def _saved_tensors(graph: Graph) -> list[torch.Tensor]:
    out = []
    for node in graph.order:
        for name in dir(node):
            if name.startswith("_saved_"):
                try:
                    value = getattr(node, name)
                except RuntimeError:
                    continue
                items = value if isinstance(value, (tuple, list)) else (value,)
                out += [v for v in items if isinstance(v, torch.Tensor)]
    return out


def measure(name: str, attn: str, tokens: int, frozen: bool) -> dict:
    import model_zoo

    model, _, _ = model_zoo.get(name).build(size="full", seed=0, attn=attn)
    model.eval()
    if frozen:
        model.requires_grad_(False)
    ids = torch.randint(3, min(model.config.vocab_size, 30000), (1, tokens))
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    with dynlrp.record() as rec:
        out = model(inputs_embeds=embeds).logits[:, -1]
    graph = Graph.build(out.grad_fn)
    kept = _storages(rec.tensors())
    shared = _storages(list(model.parameters()) + list(model.buffers()) + _saved_tensors(graph))
    row = {
        "model": name, "attn": attn, "params": "frozen" if frozen else "trainable", "nodes": len(graph),
        "values": len(rec), "kept": sum(kept.values()),
        "exclusive": sum(n for ptr, n in kept.items() if ptr not in shared),
        "saved": sum(n for ptr, n in _storages(_saved_tensors(graph)).items()),
    }
    exp = dynlrp.explain(out, rules="attnlrp", inputs=[embeds])
    row["unexplained"] = exp.conservation.unexplained
    del out, exp, graph
    rec.clear()
    with dynlrp.record(outputs=True) as full:
        out = model(inputs_embeds=embeds).logits[:, -1]
    row["activations"] = sum(t.numel() * t.element_size() for t in full._outputs.values())
    full.clear()
    del model, out
    gc.collect()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2,llama_3_2_1b")
    parser.add_argument("--attn", default="eager,sdpa")
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    print("| model | attn | params | nodes | values kept | kept (B) | exclusive (B) | graph saved (MB) |"
          " all activations (MB) | unexplained |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for attn in args.attn.split(","):
            for frozen in (False, True):
                r = measure(name, attn, args.tokens, frozen)
                print(f"| {r['model']} | {r['attn']} | {r['params']} | {r['nodes']} | {r['values']} | {r['kept']:,} |"
                      f" {r['exclusive']:,} | {r['saved'] / 2**20:.1f} | {r['activations'] / 2**20:.1f} |"
                      f" {r['unexplained']:.1e} |", flush=True)


if __name__ == "__main__":
    main()

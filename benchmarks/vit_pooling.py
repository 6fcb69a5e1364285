"""Frozen features of a pretrained ViT read two ways: its class token (what the evaluator, embed and the classifier
read) and the mean of its final-normed patch tokens (what MAE's reference fine-tunes from, `global_pool`).

  python benchmarks/vit_pooling.py /tmp/mae_runs/s1_ref [/another/pretraining/workdir ...]

For each pretraining workdir (its `config.json` and exported `backbone/`): kNN on all labels and the few-label
probes of its evaluation (`eval.*`), on the labelled set it names, for the trained backbone and timm's random init
of the same ViT, both pooled both ways; paired differences to the random init read the same way. A diagnostic of
what the class token leaves out, not an evaluation the project reports as MAE's.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import flax.linen as nn
import ml_collections

from fetalssl_jax.data import sources
from fetalssl_jax.eval.frozen import evaluate_inits, format_table
from fetalssl_jax.models.backbone import create_backbone, is_vit, random_variables
from fetalssl_jax.train.checkpoint import load_backbone


class MeanOfPatches(nn.Module):
    """A ViT's final-normed patch tokens, averaged over the grid."""

    vit: nn.Module

    @nn.compact
    def __call__(self, x, train: bool = False):
        return self.vit(x, train=train, return_tokens=True).patches.mean(axis=1)


def evaluate(workdir: pathlib.Path) -> None:
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    if not is_vit(config.model.arch):
        raise SystemExit(f"{workdir}: not a ViT ({config.model.arch})")
    variables, _ = load_backbone(workdir / "backbone")
    random = random_variables(config.model, config.data.image_size, config.seed)
    vit = create_backbone(config.model, config.data.image_size)
    splits = sources.labelled_splits(config)
    e = config.eval
    for name, module, wrap in (("class token", vit, lambda v: v), ("mean of patches", MeanOfPatches(vit), _nest)):
        result = evaluate_inits(
            module, {f"{config.method} ({name})": wrap(variables), f"random init ({name})": wrap(random)}, splits,
            config.data.image_size, len(sources.class_names(config)), baselines=(f"random init ({name})",),
            knn_k=e.knn_k, batch_size=e.batch_size, shots=tuple(e.shots), draws=e.draws, seed=config.seed,
            probe_max_iter=e.probe_max_iter,
        )  # fmt: skip
        print(f"\n{workdir}, {name}:\n{format_table(result)}")


def _nest(variables):
    return {"params": {"vit": variables["params"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdirs", nargs="+", type=pathlib.Path)
    for workdir in parser.parse_args().workdirs:
        evaluate(workdir)


if __name__ == "__main__":
    main()

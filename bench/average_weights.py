"""Average the weights of several models of one architecture into one ("model soup").

Runs fine-tuned from the same parent often sit in one basin of the loss, and
their average can generalise better than each. Batch-norm statistics are
averaged too, which is only an approximation of the average network's own.
The first model's configuration and metadata are kept; MODELS.md
(``nuclei-he``) reports what it gave there.

Usage::

    python bench/average_weights.py -o runs/soup.pt runs/a.pt runs/b.pt [runs/c.pt ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segtool.model.modelfile import load_model, save_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    loaded = [load_model(path) for path in args.models]
    if any(m.config.to_dict() | {"postprocess": {}} != loaded[0].config.to_dict() | {"postprocess": {}} for m in loaded):
        raise SystemExit("the models differ in architecture or input; only the same network can be averaged")
    states = [m.net.state_dict() for m in loaded]
    average = {
        name: sum(s[name].float() for s in states) / len(states) if value.is_floating_point() else value
        for name, value in states[0].items()
    }
    net = loaded[0].net
    net.load_state_dict(average)
    save_model(args.output, net, loaded[0].config, metadata=loaded[0].metadata)
    print(f"{args.output}: the average of {len(loaded)} models")


if __name__ == "__main__":
    main()

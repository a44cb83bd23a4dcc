#!/usr/bin/env python3
"""Export a timm model's weights to safetensors for use with bbc.

Weights are timm's own random init (default), the make_fixtures.py randomisation
(``--randomise``, every parameter and buffer made to matter), or a given state dict
(``--state-dict FILE``, .safetensors or a torch checkpoint).  Optionally runs the model
on a seeded random input and saves input and output as .npy.  Examples::

    python tools/reference/export_timm.py --model convnext_atto --out w.safetensors
    python tools/reference/export_timm.py --model convnext_atto --out w.safetensors \\
        --randomise --input-shape 1,3,224,224 --input-out x.npy --output-out y.npy

Runs on CPU in float32 with the same determinism settings as make_fixtures.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import (  # noqa: E402  (shared helpers, written once there)
    BASE_SEED,
    count_params,
    randomise_state_dict,
    round_through_f16,
    run_reference,
    save_npy,
    save_weights,
    seeded_input,
    set_determinism,
)

import timm  # noqa: E402


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    return sd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="timm model name, e.g. convnext_atto")
    ap.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    ap.add_argument("--num-classes", type=int, default=None, help="override the classifier size")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--state-dict", type=Path, help="load these weights (.safetensors or torch checkpoint)")
    src.add_argument("--randomise", action="store_true",
                     help="overwrite every float tensor with make_fixtures.py's scaled random values")
    ap.add_argument("--seed", type=int, default=BASE_SEED, help=f"seed (default {BASE_SEED})")
    ap.add_argument("--f16", action="store_true",
                    help="store weights as float16 (the reference output uses the f16-rounded weights)")
    ap.add_argument("--input-shape", help="comma-separated input shape, e.g. 1,3,224,224")
    ap.add_argument("--input-out", type=Path, help="save the random input here (.npy)")
    ap.add_argument("--output-out", type=Path, help="save the model output here (.npy)")
    args = ap.parse_args(argv)
    if (args.input_out or args.output_out) and not args.input_shape:
        ap.error("--input-out/--output-out need --input-shape")

    set_determinism(args.seed)
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = timm.create_model(args.model, pretrained=False, **kwargs)
    if args.state_dict:
        model.load_state_dict(load_state_dict_file(args.state_dict), strict=True)
    elif args.randomise:
        randomise_state_dict(model, args.seed)
    if args.f16:
        round_through_f16(model)
    model.eval()

    save_weights(model, args.out, torch.float16 if args.f16 else torch.float32,
                 metadata={"reference": f"timm {timm.__version__} {args.model}"})
    sd = model.state_dict()
    print(f"{args.model}: {len(sd)} tensors, {count_params(model):,} params -> {args.out} "
          f"({args.out.stat().st_size / 2**20:.2f} MiB)")

    if args.input_shape:
        shape = tuple(int(s) for s in args.input_shape.split(","))
        x = seeded_input(shape, args.seed)
        y = run_reference(model, {"x": x})
        if args.input_out:
            save_npy(args.input_out, x)
        if args.output_out:
            save_npy(args.output_out, y)
        print(f"input {list(x.shape)} -> output {list(y.shape)}, max|out|={y.abs().max():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How far, and how straight, did RL move the policy? And does a random move of that size matter?

    python -m bench.weight_moves distances SFT CKPT_A CKPT_B ...
    python -m bench.weight_moves perturb --base SFT --like SFT CKPT --seed 0 --out DIR

`distances` prints each checkpoint's L2 distance from the first and from the one before it, and
the cosine between consecutive moves. A run whose updates carry signal moves the policy in a
straight line (distance grows like the iterations); one dominated by gradient noise random-walks
(distance grows like their square root, consecutive moves near orthogonal).

`perturb` writes a copy of `--base` moved in a random direction, per tensor as far as `--like A B`
moved (|B - A| per tensor). Evaluating it beside B asks whether B's change in success comes from
where RL moved or just from moving that far (docs/results/libero.md).
"""

from __future__ import annotations

import argparse

import torch

from svrl_core.policies.policy import VLAPolicy

Weights = dict[str, torch.Tensor]


def float_weights(directory: str) -> Weights:
    """A checkpoint's floating-point tensors, in float32 on the CPU."""
    state = VLAPolicy.load(directory).model.state_dict()
    return {name: t.detach().float().cpu() for name, t in state.items() if t.is_floating_point()}


def difference(a: Weights, b: Weights) -> Weights:
    """b - a, tensor by tensor (the same architecture)."""
    if a.keys() != b.keys():
        raise ValueError("the checkpoints have different tensors: compare checkpoints of one run")
    return {name: b[name] - a[name] for name in a}


def norm(w: Weights) -> float:
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in w.values())))


def cosine(u: Weights, v: Weights) -> float:
    dot = sum((u[name].double() * v[name].double()).sum() for name in u)
    return float(dot) / max(norm(u) * norm(v), 1e-30)


def random_move_like(move: Weights, seed: int) -> Weights:
    """A move in a uniformly random direction, each tensor as long as in `move`."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in sorted(move.items()):
        noise = torch.randn(t.shape, generator=generator)
        out[name] = noise * (t.norm() / noise.norm().clamp_min(1e-30))
    return out


def print_distances(directories: list[str]) -> None:
    weights = [float_weights(d) for d in directories]
    print(f"{directories[0]}: norm {norm(weights[0]):.4f}")
    previous_move = None
    for i in range(1, len(weights)):
        move = difference(weights[i - 1], weights[i])
        line = (f"{directories[i]}: from first {norm(difference(weights[0], weights[i])):.4f}, "
                f"from previous {norm(move):.4f}")
        if previous_move is not None:
            line += f", cosine with the previous move {cosine(previous_move, move):+.3f}"
        print(line)
        previous_move = move


def write_perturbed(base: str, like: tuple[str, str], seed: int, out: str) -> None:
    policy = VLAPolicy.load(base)
    move = random_move_like(difference(float_weights(like[0]), float_weights(like[1])), seed)
    with torch.no_grad():
        for name, t in policy.model.state_dict().items():
            if name in move:
                t.add_(move[name].to(t.dtype))
    policy.save(out)
    print(f"{out}: {base} moved {norm(move):.4f} in a random direction (seed {seed})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    distances = commands.add_parser("distances", help="distances and move cosines along checkpoints")
    distances.add_argument("checkpoints", nargs="+")
    perturb = commands.add_parser("perturb", help="a random move as large as a measured one")
    perturb.add_argument("--base", required=True)
    perturb.add_argument("--like", nargs=2, required=True, metavar=("A", "B"))
    perturb.add_argument("--seed", type=int, default=0)
    perturb.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.command == "distances":
        if len(args.checkpoints) < 2:
            parser.error("distances needs two checkpoints or more")
        print_distances(args.checkpoints)
    else:
        write_perturbed(args.base, tuple(args.like), args.seed, args.out)


if __name__ == "__main__":
    main()

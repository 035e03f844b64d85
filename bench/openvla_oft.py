"""OpenVLA-OFT throughput and memory, side by side in one run: raw forward, rollout inference, GRPO update.

    python -m bench.openvla_oft --layout 7b --device cuda   # the paper's layout, random weights, bf16
    python -m bench.openvla_oft --layout small              # CPU: a scaled-down layout

- raw forward: the network alone on inputs already on the device (action chunks/s per batch);
- rollout inference: what a rollout pays per query batch, as svrl runs it: numpy images and
  instructions -> prepare (tokenize, stack) -> forward -> sample at T = 1.6 on the CPU.
  Printed as a fraction of the raw forward at the same batch (goal: >= 0.8 at batch 32+);
- update: one GRPO mini-batch (forward + backward + AdamW step) with full fine-tuning and
  with LoRA, sequences/s and peak device memory, gradient checkpointing on. With
  `--micro-batch M` the batch goes through in micro-batches of M sequences (gradients
  accumulated, one step), as `rl.micro_batch_chunks` does: then `--update-batch` can be a slice
  of a real mini-batch (e.g. 4 of its 128 trajectories x 35 chunks = 140 sequences), and the
  time of the whole one is extrapolated (`--mini-batch-sequences`).
The LIBERO setting: one 224 px third-person camera, no proprio, K = 8, D = 7.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
from torch.nn import functional as F

from svrl_core.policies.openvla_oft.config import oft_7b, oft_tiny
from svrl_core.policies.openvla_oft.lora import add_lora
from svrl_core.policies.openvla_oft.model import OpenVLAOFT
from svrl_core.policies.openvla_oft.policy import OpenVLAOFTPolicy
from svrl_core.policies.openvla_oft.prompt import PromptEncoder, byte_tokenizer
from svrl_core.policies.openvla_oft.vision import TowerSpec
from svrl_core.policies.policy import token_log_probs
from svrl_core.policies.tokenizer import ActionTokenizer

INSTRUCTIONS = ["pick up the alphabet soup and place it in the basket",
                "pick up the cream cheese and place it in the basket", "pick up the ketchup and place it in the basket"]


def build(layout: str, device: str, dtype: torch.dtype, seed: int = 0) -> OpenVLAOFTPolicy:
    """A random-weight policy; the 7b layout gets a byte tokenizer padded to Llama's 48 prompt tokens."""
    torch.manual_seed(seed)
    tokenizer = byte_tokenizer(256)
    if layout == "7b":
        cfg = oft_7b(8, 7, max_prompt_tokens=48, space_token_id=None, input_image_shape=(224, 224))
    else:
        cfg = oft_tiny(8, 7, tokenizer.get_vocab_size(), image_size=64, space_token_id=None,
                       input_image_shape=(224, 224))
    if layout == "small":  # the 7b token layout (256 patches of 14 px at 224 px), narrow and shallow
        towers = (TowerSpec("small_dinov2", 128, 4, 4, 512, 14, 224, reg_tokens=4, layer_scale=True),
                  TowerSpec("small_siglip", 128, 4, 4, 512, 14, 224, class_token=False))
        text = {**cfg.text_config, "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4,
                "num_attention_heads": 8, "num_key_value_heads": 8}
        cfg = replace(cfg, towers=towers, text_config=text, max_prompt_tokens=48)
    torch.set_default_dtype(dtype)  # built in its final dtype: a 7b fp32 copy would need 30 GB more
    try:
        with torch.device(device):
            model = OpenVLAOFT(cfg).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    actions = ActionTokenizer(-np.ones(7), np.ones(7), np.ones(7, bool), 256, "openvla")
    prompts = PromptEncoder(tokenizer, cfg)
    # byte prompts are long: cut to the layout's limit (48 ids is about a Llama LIBERO prompt's length in tokens)
    prompts.prompt_ids = lambda text, _ids=prompts.prompt_ids: _ids(text)[:cfg.max_prompt_tokens]
    return OpenVLAOFTPolicy(model, actions, prompts, np.zeros(8), np.ones(8), {})


def synced(device: str):
    def now() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()
    return now


def rate(fn, items: int, now, repeats: int) -> float:
    fn()  # warm-up (kernels, allocator)
    start = now()
    for _ in range(repeats):
        fn()
    return items * repeats / (now() - start)


def inference(policy: OpenVLAOFTPolicy, batches: list[int], device: str, repeats: int) -> None:
    now = synced(device)
    rng = np.random.default_rng(0)
    print(f"{'batch':>6} {'raw chunks/s':>13} {'rollout chunks/s':>17} {'fraction':>9}")
    for batch in batches:
        images = rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
        states = np.zeros((batch, 8), np.float32)
        texts = [INSTRUCTIONS[i % 3] for i in range(batch)]
        on_device = policy.prepare_arrays({policy.camera: images}, states, texts)
        on_device.images, on_device.states = on_device.images.to(device), on_device.states.to(device)
        on_device.instruction_ids = on_device.instruction_ids.to(device)
        with torch.no_grad():
            raw = rate(lambda: policy.model._action_logits(on_device), batch, now, repeats)
            rollout = rate(lambda: policy.sample(policy.prepare_arrays({policy.camera: images}, states, texts), 1.6),
                           batch, now, repeats)
        print(f"{batch:>6} {raw:>13.1f} {rollout:>17.1f} {rollout / raw:>9.2f}")


def update(policy: OpenVLAOFTPolicy, batch: int, device: str, repeats: int, label: str, micro_batch: int | None = None,
           mini_batch_sequences: int | None = None) -> None:
    now = synced(device)
    policy.model.train()
    params = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-6, weight_decay=0.01)
    rng = np.random.default_rng(1)
    inputs = policy.prepare_arrays({policy.camera: rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)},
                                   np.zeros((batch, 8), np.float32), [INSTRUCTIONS[i % 3] for i in range(batch)])
    bins = torch.from_numpy(rng.integers(0, 256, (batch, 56)))
    advantages = torch.from_numpy(rng.standard_normal(batch)).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for rows in torch.arange(batch).split(micro_batch or batch):  # gradients add up over micro-batches
            log_probs, _ = token_log_probs(policy.model(inputs.select(rows)), bins[rows], 1.6)  # (M, 56)
            # any differentiable objective of the same cost, weighted as a share of the whole batch
            loss = -(F.softplus(log_probs) * advantages[rows, None]).sum() / (batch * 56)
            loss.backward()
        optimizer.step()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    per_s = rate(step, batch, now, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    trained = sum(p.numel() for p in params)
    micro = f" in micro-batches of {micro_batch}" if micro_batch else ""
    print(f"update {label:>5}: {per_s:6.2f} sequences/s at batch {batch}{micro}, peak {peak:.1f} GiB, "
          f"{trained / 1e6:.1f}M trained parameters")
    if mini_batch_sequences:
        print(f"  a mini-batch of {mini_batch_sequences} sequences at that rate: {mini_batch_sequences / per_s:.0f} s "
              f"on one device")
    policy.model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", choices=["tiny", "small", "7b"], default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--update-batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, help="sequences per forward/backward in the update")
    parser.add_argument("--mini-batch-sequences", type=int, help="extrapolate the update to a mini-batch this size")
    parser.add_argument("--lora-rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], choices=["inference", "full", "lora"])
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    print(f"OpenVLA-OFT {args.layout} on {args.device} ({dtype}), torch {torch.__version__}")
    policy = build(args.layout, args.device, dtype)
    print(f"{sum(p.numel() for p in policy.model.parameters()) / 1e9:.2f}e9 parameters, "
          f"{policy.cfg.sequence_length + policy.cfg.towers[0].n_patches} tokens per sequence")
    if "inference" not in args.skip:
        inference(policy, args.batches, args.device, args.repeats)
    policy.model.gradient_checkpointing_enable()
    if "full" not in args.skip:
        update(policy, args.update_batch, args.device, args.repeats, "full", args.micro_batch,
               args.mini_batch_sequences)
    if "lora" not in args.skip:
        del policy
        if args.device == "cuda":
            torch.cuda.empty_cache()
        policy = build(args.layout, args.device, dtype)
        add_lora(policy.model, args.lora_rank, args.lora_rank / 2)
        policy.model.to(args.device, dtype).gradient_checkpointing_enable()
        update(policy, args.update_batch * 2, args.device, args.repeats, "lora", args.micro_batch,
               args.mini_batch_sequences)


if __name__ == "__main__":
    main()

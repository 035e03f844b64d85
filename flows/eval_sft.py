from flows.cli import run_stage
from flows.evaluate import eval_sft_flow

if __name__ == "__main__":
    run_stage(eval_sft_flow)

"""The Qwen3 classifier engine, checkpoints and the offline trainer. Never imports faust."""

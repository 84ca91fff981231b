"""train: one rank's training — the loop (`loop`), optimizer and schedule (`optim`), the train state that resumes
exactly (`state`), sharded atomic checkpoints (`checkpoint`), saving and stopping on Slurm's warning signal
(`preemption`), loss-spike detection and response (`spikes`), metrics and MFU (`metrics`), W&B (`tracking`) and the
export of a trained model to a transformers directory (`export`). May import every other wing."""

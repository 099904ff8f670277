"""`scaling run --help`: every RunConfig field as a flag with a one-line description, grouped as the README
groups them. tests/test_config.py checks that every field is here exactly once."""

from __future__ import annotations

# (group title, [(field, description)]). Choices and defaults are added from the config itself.
GROUPS: list[tuple[str, list[tuple[str, str]]]] = [
    ("batch: global = per-device x processes x accumulation steps", [
        ("global_bs", "samples per optimizer step, over all processes and micro-steps"),
        ("per_device_bs", "micro-batch per process: an integer, or auto (largest that fits, by trial)"),
        ("accumulation_steps", "micro-steps per optimizer step (give this or --per-device-bs, not both)"),
        ("emulate_processes", "run the batch schedule of N processes on fewer (exact: same samples, gradients)"),
        ("max_per_device_bs", "cap for the per-device batch chosen when neither factor is given"),
        ("memory_cap_mb", "with --per-device-bs auto: a micro-batch whose measured peak exceeds this fails"),
        ("sync_bn", "BatchNorm statistics over all GPUs (SyncBatchNorm; real multi-GPU runs only)"),
        ("batch_schedule", "the global batch changing during the run: START:BATCH pairs, the samples (tokens for a "
                           "language model) from which each batch trains, e.g. 0:64,20000:128; the accumulation "
                           "steps follow the batch"),
        ("batch_schedule_lr", "the LR at each batch of --batch-schedule: rule (--lr-scaling's LR at that batch), "
                              "seesaw (x 1/sqrt(2) per doubling, Meterez et al. 2025), constant"),
    ]),
    ("learning rate", [
        ("base_lr", "LR tuned at the reference batch --base-bs"),
        ("base_bs", "the reference batch of --base-lr"),
        ("lr_scaling", "how the LR follows the global batch: none, linear (SGD: Goyal et al.), sqrt (SGD: Hoffer et al.; Adam: "
                       "Malladi et al.), adam-sde (AdamW: Malladi et al.'s rule for LR, betas, eps)"),
        ("warmup_steps", "linear warmup to the scaled LR, in optimizer steps"),
        ("warmup_epochs", "the same in epochs"),
        ("lr_decay", "after warmup: constant, cosine (needs a step or epoch budget), step"),
        ("lr_step_epochs", "step decay: epochs at which the LR is multiplied by --lr-step-gamma (e.g. 30,60)"),
        ("lr_step_gamma", "step decay factor"),
        ("optimizer", "sgd (with momentum) or adamw"),
        ("momentum", "SGD momentum"),
        ("beta1", "AdamW's beta1 (the gradient's moving average)"),
        ("beta2", "AdamW's beta2 (the squared gradient's moving average)"),
        ("eps", "AdamW's epsilon"),
        ("weight_decay", "weight decay"),
        ("beta2_scaling", "AdamW's beta2 with the batch: none, or half-life (beta2^(global/base): its half-life "
                          "stays fixed in samples, Marek et al. 2025)"),
    ]),
    ("stopping", [
        ("target_accuracy", "stop at the first step whose evaluation accuracy reaches it (none: no target)"),
        ("target_loss", "stop at the first step whose evaluation loss is at or below it (nats per token for a "
                        "language model; replaces the default accuracy target)"),
        ("max_steps", "budget in optimizer steps"),
        ("max_epochs", "budget in epochs"),
        ("max_time", "budget in seconds of wall time, evaluation included"),
        ("cap_steps", "end the run as not reached after this many optimizer steps, with the LR schedule still "
                      "spanning the whole budget (a tuning trial that can no longer win)"),
        ("pace", "milestones step,value,...: end the run as not reached at an evaluation past a milestone's step "
                 "while its best value of the target's metric has not reached the milestone's (a tuning trial "
                 "behind the best so far)"),
        ("target_levels", "further levels of the target's metric, easier than the target (e.g. 0.6,0.75 below "
                          "--target-accuracy 0.9): the run records the exact first step at each on its way"),
        ("eval_every", "evaluate every N optimizer steps"),
        ("eval_every_epochs", "evaluate every fraction of an epoch (when --eval-every is not set)"),
        ("eval_samples", "evaluate on the first N samples of the evaluation set (--dataset stories: N new "
                         "sequences) (default: all of it; stories: 256)"),
        ("diverge_factor", "a training loss above this multiple of the first one ends the run as diverged"),
        ("stall_evals", "end the run as stalled after this many evaluations in a row after warmup (and at least "
                        "an epoch) at the chance loss with no progress (0: never; docs/results.md)"),
        ("exact_target", "replay training, evaluating every step, to find the exact first step at the target"),
        ("exact_target_max_steps", "the most steps that replay may take (each with one evaluation); beyond it the "
                                   "result gives the interval that holds the first step"),
    ]),
    ("data and model", [
        ("dataset", "mnist1d, mnist1d_images, synthetic_images, stories (generated text, docs/lm.md), a hub id, a "
                    "local file or folder, or module:callable"),
        ("dataset_config", "configuration name passed to datasets.load_dataset"),
        ("train_split", "training split, with datasets' slicing (e.g. train[:80%])"),
        ("eval_split", "evaluation split, with datasets' slicing (e.g. train[80%:])"),
        ("input_column", "input column(s), comma-separated (default: every column but the label)"),
        ("label_column", "integer class label column"),
        ("num_samples", "samples generated for a built-in dataset (80% train, 20% eval)"),
        ("model", "cnn1d, cnn1d_bn, mlp, cnn2d, resnet_cifar, gpt, or module:callable"),
        ("task", "classification or next-token (auto: next-token when each label is a sequence like its input)"),
        ("text_column", "text files: the column of text to train on"),
        ("tokenizer", "text: bytes (UTF-8, 256 ids), or a local tokenizer.json or a folder holding one"),
        ("context", "text: tokens per training sequence"),
        ("seed", "initial weights and sample order"),
    ]),
    ("input pipeline", [
        ("num_workers", "DataLoader worker processes (map-style datasets)"),
        ("pin_memory", "pinned host memory for the DataLoader's batches"),
        ("prefetch_factor", "batches each worker loads ahead (needs --num-workers)"),
        ("persistent_workers", "keep DataLoader workers between epochs (needs --num-workers)"),
        ("fast_path", "index in-memory tensors a whole batch at a time instead of a DataLoader"),
        ("materialize", "read a map-style dataset of fixed tensors into memory once: auto, true, false"),
    ]),
    ("measurement", [
        ("probe", "measure the input and compute ceilings before training and say which bounds the run"),
        ("probe_steps", "optimizer steps timed for each ceiling"),
        ("profile_sync", "synchronize the GPU at every phase boundary (exact phases, slower)"),
        ("time_phases", "per-step phase timing: data wait, copy, forward/backward, sync, optimizer"),
        ("noise_scale", "measure the gradient noise scale B_simple during training"),
        ("noise_every", "optimizer steps between noise-scale measurements (default 10, or 50 for half_batch)"),
        ("log_with", "trackers, comma-separated: tensorboard, wandb, mlflow, ... (their packages installed)"),
    ]),
    ("machine and output", [
        ("cpu", "train on the CPU even where a GPU exists"),
        ("mixed_precision", "no, bf16 or fp16 (through Accelerate); auto: the launcher's (accelerate launch "
                            "--mixed_precision, accelerate config), else no"),
        ("compile", "torch.compile backend through Accelerate (inductor, aot_eager, ...), compiled before the clock; "
                    "none: eager; auto: the launcher's --dynamo_backend, else eager"),
        ("channels_last", "NHWC memory format for image models and their inputs"),
        ("output_dir", "where result.json, metrics.jsonl and checkpoints go (default: a new runs/<time> folder)"),
        ("overwrite", "replace an earlier run in --output-dir"),
        ("log_every", "optimizer steps per logging window (throughput, metrics.jsonl, stop checks), at least"),
        ("log_min_s", "a logging window lasts a multiple of --log-every steps and at least this many seconds "
                      "(default 0.5; 0: exactly --log-every steps)"),
        ("progress", "a progress bar on the main process"),
        ("save_model", "write the final weights to OUTPUT_DIR/model.pt"),
        ("checkpoint_every", "also checkpoint every N optimizer steps (always on SIGTERM/SIGINT)"),
        ("branch_points", "keep a checkpoint at these steps for scaling branch: fractions of the step budget "
                          "(10%,25%,50%) or step numbers"),
        ("start_from", "start from a checkpoint folder (a branch point of another run): its weights, optimizer, "
                       "RNG and steps, under this run's settings"),
    ]),
]

HELP: dict[str, str] = {name: text for _, fields in GROUPS for name, text in fields}

#!/bin/bash

# Parameters
#SBATCH --array=0-32%33
#SBATCH --cpus-per-task=8
#SBATCH --error=<output>/jobs/%A_%a_0_log.err
#SBATCH --gpus-per-node=1
#SBATCH --job-name=effbench-train
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output=<output>/jobs/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --signal=USR2@90
#SBATCH --time=240
#SBATCH --wckey=submitit

# command: what compare submits through submitit, which adds the requeue on a time
# limit and moves a unit's results from .attempts/ into results/ once it succeeded;
# sbatch runs this script by hand (array task i runs command i)
COMMANDS=(
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention standard --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[0]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention standard --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[1]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention standard --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[2]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention fused --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[0]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention fused --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[1]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention fused --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[2]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention sdpa --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[0]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention sdpa --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[1]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention sdpa --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[2]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention linformer --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[0]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention linformer --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[1]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention linformer --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[2]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention performer --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[0]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention performer --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[1]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention performer --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[2]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention nystrom --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[0]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention nystrom --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[1]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention nystrom --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[2]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention hybrid --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[0]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention hybrid --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[1]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention hybrid --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[2]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention window --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[0]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention window --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[1]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention window --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[2]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention neighborhood --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[0]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention neighborhood --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[1]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention neighborhood --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[2]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention relu_linear --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[0]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention relu_linear --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[1]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention relu_linear --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[2]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention agent --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[0]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention agent --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[1]'"'"' -o <output>/runs --resume auto --threads 8'
  'python -m effbench train --spec <effbench>/recipes/cifar10-gpu.toml --attention agent --set '"'"'train.seeds=[0, 1, 2]'"'"' --set '"'"'train.seeds=[2]'"'"' -o <output>/runs --resume auto --threads 8'
)
srun --unbuffered bash -c "${COMMANDS[${SLURM_ARRAY_TASK_ID:-0}]}"

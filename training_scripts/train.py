"""Train one task of the seed experiment with one optimizer, with transformers.Trainer (+ AdaOptCallback).

Offline default (scikit-learn digits, seconds on a CPU):
    python training_scripts/train.py --task digits --optimizer adaopt --output_dir out/digits-adaopt
The real-data tasks (Hub datasets; or --train_file/--validation_file in the Hub schema):
    accelerate launch training_scripts/train.py --task mnist --optimizer adaopt --output_dir out/mnist-adaopt
    accelerate launch training_scripts/train.py --task mnist --model mlp --optimizer adam --output_dir out/mnist-mlp-adam
    accelerate launch training_scripts/train.py --task cifar10 --augment --optimizer sgd --output_dir out/c10-sgd
    accelerate launch training_scripts/train.py --task imdb --optimizer rmsprop --output_dir out/imdb-rmsprop
    accelerate launch training_scripts/train.py --task squad --optimizer adaopt --output_dir out/squad-adaopt
Multi-process / mixed precision through an accelerate config (training_scripts/accelerate_configs/):
    accelerate launch --config_file training_scripts/accelerate_configs/cpu_2proc.yaml \
        training_scripts/train.py --task digits --output_dir out/digits-ddp
    accelerate launch --config_file training_scripts/accelerate_configs/single_gpu_bf16.yaml \
        training_scripts/train.py --task cifar10 --bf16 --output_dir out/c10-bf16

Options: TaskArguments (--task, --dataset_name, --train_file, --validation_file, --max_train_samples,
--max_eval_samples, --model, --augment, ...), --optimizer {adaopt,sgd,adam,adamw,rmsprop,prodigy,dadapt,
schedulefree,dog}, and every TrainingArguments flag (--learning_rate, --seed, --num_train_epochs, --bf16,
--gradient_accumulation_steps, --report_to, --push_to_hub, --hub_model_id, ...). `--help` lists them all.
Same as `hf-adaopt train ...`; the code is hf_adaopt/lab/run.py.
"""

import sys

from hf_adaopt.lab.run import main

if __name__ == "__main__":
    sys.exit(main())

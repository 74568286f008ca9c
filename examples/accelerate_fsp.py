"""FSP distillation in a Hugging Face Accelerate loop: ``pip install 'fspkd[accelerate]'``, then

    accelerate launch --num_processes 1 --cpu examples/accelerate_fsp.py --steps 20
    accelerate launch --multi_gpu --num_processes 2 examples/accelerate_fsp.py   # DDP on two GPUs

Stage 1 fits the student's FSP matrices to the teacher's, the task stage then trains it on the labels; each stage
with the optimiser and learning rates ``fspkd distill`` would use. The data here is random images so that the
example runs anywhere: put your own ``DataLoader`` of (image, label) batches in ``loader()``.
"""

import argparse

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs

import fspkd
from fspkd.models import create


def loader(batch_size: int) -> torch.utils.data.DataLoader:
    images, labels = torch.randn(256, 3, 32, 32), torch.randint(0, 10, (256,))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size, shuffle=True)


def train_stage(accelerator, model, distiller, batches, steps: int) -> float:
    """``steps`` optimiser steps of the distiller's current stage through ``model`` (the prepared distiller);
    returns the last loss."""
    optimizer = accelerator.prepare(distiller.make_optimizer())  # each stage has its own optimiser
    schedule = distiller.schedule
    model.train()
    data = iter(batches)
    for step in range(steps):
        try:
            images, labels = next(data)
        except StopIteration:
            data = iter(batches)
            images, labels = next(data)
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(step)
        distiller.progress = step / max(steps - 1, 1)
        _, losses = model(images, labels)
        optimizer.zero_grad()
        accelerator.backward(losses["loss"])
        optimizer.step()
    accelerator.print(f"{distiller.stage}: loss {losses['loss'].item():.4f} after {steps} steps on "
                      f"{accelerator.num_processes} process(es)")
    return losses["loss"].item()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per stage")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="fsp-student.pt", help="where the main process saves the student")
    args = parser.parse_args(argv)
    # stage 1 leaves the student's classifier without gradients: DDP must not wait for them
    accelerator = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    torch.manual_seed(0)
    teacher, student = create("resnet20"), create("resnet8")  # your own networks work the same way
    batches = accelerator.prepare(loader(args.batch_size))
    distiller = fspkd.Distiller(student, teacher, "fsp").to(accelerator.device)
    distiller.check(next(iter(batches))[0])  # pairs, widths, classes: a clear error before any training
    model = accelerator.prepare(distiller)  # once: DDP over several processes (the teacher stays outside it)
    for stage in distiller.stages:
        distiller.stage = stage
        train_stage(accelerator, model, distiller, batches, args.steps)
    if accelerator.is_main_process:
        torch.save(accelerator.unwrap_model(distiller).student.state_dict(), args.out)


if __name__ == "__main__":
    main()

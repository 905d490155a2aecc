import json
import sys
import warnings
from typing import ClassVar

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

warnings.filterwarnings("ignore")
bar = sys.argv[2]  # "tqdm" or "rich"
torch.manual_seed(0)


class Model(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, index):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, index):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), 0.1)


class Record(pl.Callback):
    epochs: ClassVar[list[float]] = []

    def on_validation_epoch_end(self, trainer, module):
        if not trainer.sanity_checking:
            self.epochs.append(float(trainer.callback_metrics["val_loss"]))


x = torch.rand(64, 4)
y = x.sum(1, keepdim=True)
train = DataLoader(TensorDataset(x, y), batch_size=16)
valid = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=16)
progress = pl.callbacks.TQDMProgressBar() if bar == "tqdm" else pl.callbacks.RichProgressBar()
trainer = pl.Trainer(
    max_epochs=3,
    enable_checkpointing=False,
    logger=False,
    accelerator="cpu",
    callbacks=[progress, Record()],
    enable_model_summary=False,
)
trainer.fit(Model(), train, valid)
with open(sys.argv[1], "w") as handle:
    json.dump({"version": pl.__version__, "val_loss": Record.epochs}, handle)

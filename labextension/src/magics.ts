/**
 * Model cells in notebooks: a code cell whose first line is `%%neural_compile`,
 * `%%neural_run` or `%%neural_sweep` is highlighted as the model language.
 *
 * The notebook gives every code cell the kernel language's mime type (on insertion and
 * whenever the kernel's language info arrives); a model cell gets ours back each time, and
 * returns to the notebook's when the magic line goes away. The mime type is editor state
 * only: nothing is written into the notebook file.
 */
import { INotebookTracker, Notebook, NotebookPanel } from '@jupyterlab/notebook';
import { ICellModel } from '@jupyterlab/cells';

import { NEURAL_MIME } from './language';

export const MODEL_CELL = /^\s*%%(neural_compile|neural_run|neural_sweep)\b/;

/** Whether a cell's source starts with one of our model-cell magics. */
export function isModelCell(source: string): boolean {
  return MODEL_CELL.test(source.slice(0, 200));
}

function sync(model: ICellModel, notebook: Notebook): void {
  if (model.type !== 'code') {
    return;
  }
  const wanted = isModelCell(model.sharedModel.getSource())
    ? NEURAL_MIME
    : notebook.codeMimetype;
  if (model.mimeType !== wanted) {
    model.mimeType = wanted;
  }
}

function watch(model: ICellModel, notebook: Notebook, watched: WeakSet<ICellModel>): void {
  if (model.type !== 'code' || watched.has(model)) {
    return;
  }
  watched.add(model);
  model.contentChanged.connect(() => sync(model, notebook));
  model.mimeTypeChanged.connect(() => sync(model, notebook));
  sync(model, notebook);
}

function follow(panel: NotebookPanel): void {
  const notebook = panel.content;
  const watched = new WeakSet<ICellModel>();
  const attach = () => {
    const cells = notebook.model?.cells;
    if (!cells) {
      return;
    }
    for (let i = 0; i < cells.length; i++) {
      watch(cells.get(i), notebook, watched);
    }
    cells.changed.connect((_, change) => {
      for (const model of change.newValues) {
        watch(model, notebook, watched);
      }
    });
  };
  if (notebook.model) {
    attach();
  }
  notebook.modelChanged.connect(attach);
}

export function highlightModelCells(tracker: INotebookTracker): void {
  tracker.forEach(follow);
  tracker.widgetAdded.connect((_, panel) => follow(panel));
}

/**
 * neural-jupyter for JupyterLab 4: the "Neural jobs" sidebar (every job of every kernel,
 * from the server extension's REST API) and highlighting of the model language in
 * `%%neural_...` cells and `.neural` files.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { IFrame, MainAreaWidget, showErrorMessage } from '@jupyterlab/apputils';
import { IEditorLanguageRegistry } from '@jupyterlab/codemirror';
import { INotebookTracker } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';

import { ApiError, IJob, dashboardUrl } from './api';
import { NEURAL_MIME, neuralSupport } from './language';
import { LogView } from './logview';
import { highlightModelCells } from './magics';
import { JobsPanel } from './sidebar';

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16">
<g class="jp-icon3" fill="#616161" stroke="#616161">
<g stroke-width="1.4" fill="none"><path d="M5 6l7 6M5 12h7M5 18l7-6M12 12l7-5M12 12l7 5"/></g>
<circle cx="5" cy="6" r="2.2"/><circle cx="5" cy="12" r="2.2"/><circle cx="5" cy="18" r="2.2"/>
<circle cx="12" cy="12" r="2.4"/><circle cx="19" cy="7" r="2.2"/><circle cx="19" cy="17" r="2.2"/>
</g></svg>`;

export const neuralIcon = new LabIcon({ name: 'neural-jupyter:jobs', svgstr: ICON_SVG });

const sidebar: JupyterFrontEndPlugin<void> = {
  id: 'neural-jupyter:jobs-sidebar',
  description: 'A left-sidebar panel listing every neural-jupyter job.',
  autoStart: true,
  optional: [ILayoutRestorer],
  activate: (app: JupyterFrontEnd, restorer: ILayoutRestorer | null) => {
    const logs = new Map<string, MainAreaWidget<LogView>>();
    const dashboards = new Map<string, MainAreaWidget<IFrame>>();
    const panel = new JobsPanel({
      openLogs: (job: IJob) => {
        let widget = logs.get(job.id);
        if (!widget || widget.isDisposed) {
          const view = new LogView(job.id, () => {
            const known = panel.jobs.get(job.id);
            return known ? !known.terminal : !job.terminal;
          });
          widget = new MainAreaWidget({ content: view });
          widget.id = `neural-jupyter-logs-${job.id}`;
          widget.title.label = `Logs ${job.id}`;
          widget.title.icon = neuralIcon;
          widget.title.closable = true;
          logs.set(job.id, widget);
          app.shell.add(widget, 'main', { mode: 'split-right' });
        }
        app.shell.activateById(widget.id);
      },
      openDashboard: async (job: IJob) => {
        let widget = dashboards.get(job.id);
        if (!widget || widget.isDisposed) {
          let url: string;
          try {
            url = (await dashboardUrl(job.id)).url;
          } catch (error) {
            const hint = error instanceof ApiError && error.hint ? `\n${error.hint}` : '';
            await showErrorMessage('Cannot open the dashboard', `${(error as Error).message}${hint}`);
            return;
          }
          const frame = new IFrame({ sandbox: ['allow-scripts', 'allow-same-origin'] });
          frame.url = url;
          widget = new MainAreaWidget({ content: frame });
          widget.id = `neural-jupyter-dashboard-${job.id}`;
          widget.title.label = `Dashboard ${job.id}`;
          widget.title.icon = neuralIcon;
          widget.title.closable = true;
          dashboards.set(job.id, widget);
          app.shell.add(widget, 'main');
        }
        app.shell.activateById(widget.id);
      }
    });
    panel.title.icon = neuralIcon;
    app.shell.add(panel, 'left', { rank: 600 });
    if (restorer) {
      restorer.add(panel, panel.id);
    }
  }
};

const language: JupyterFrontEndPlugin<void> = {
  id: 'neural-jupyter:language',
  description: 'Highlighting for the Neural model language (.neural files, model cells).',
  autoStart: true,
  requires: [IEditorLanguageRegistry],
  optional: [INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    languages: IEditorLanguageRegistry,
    notebooks: INotebookTracker | null
  ) => {
    languages.addLanguage({
      name: 'neural',
      displayName: 'Neural model language',
      mime: NEURAL_MIME,
      extensions: ['neural'],
      support: neuralSupport()
    });
    app.docRegistry.addFileType({
      name: 'neural',
      displayName: 'Neural model',
      extensions: ['.neural'],
      mimeTypes: [NEURAL_MIME],
      fileFormat: 'text',
      contentType: 'file',
      icon: neuralIcon
    });
    if (notebooks) {
      highlightModelCells(notebooks);
    }
  }
};

export default [sidebar, language];

/**
 * The "Neural jobs" sidebar: every job of every kernel, read from the server extension,
 * polled while visible (2 s while something runs, 10 s otherwise, backing off to 60 s while
 * the server does not answer).
 */
import { Clipboard, Dialog, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { checkIcon, copyIcon } from '@jupyterlab/ui-components';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { ApiError, IFilters, IJob, cancelJob, listJobs } from './api';
import {
  formatUsd,
  headlineMetrics,
  progressLine,
  timeLine,
  timeTitle
} from './format';

export interface IJobActions {
  openLogs(job: IJob): void;
  openDashboard(job: IJob): void;
}

const ACTIVE_INTERVAL = 2000;
const IDLE_INTERVAL = 4000;
const MAX_INTERVAL = 60000;

const STATUS_FILTERS: [string, string][] = [
  ['', 'All statuses'],
  ['PENDING,RUNNING,UNKNOWN', 'Active'],
  ['SUCCEEDED', 'Succeeded'],
  ['FAILED', 'Failed'],
  ['CANCELLED', 'Cancelled']
];

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

export class JobsPanel extends Widget {
  constructor(private readonly actions: IJobActions) {
    super();
    this.id = 'neural-jupyter-jobs';
    this.addClass('nj-JobsPanel');
    this.title.caption = 'Neural jobs';

    const header = el('div', 'nj-header');
    header.appendChild(el('h2', 'nj-title', 'Neural jobs'));
    const refresh = el('button', 'nj-button nj-refresh', 'Refresh');
    refresh.title = 'Re-check every unfinished job now';
    refresh.addEventListener('click', () => void this._poll.refresh());
    header.appendChild(refresh);
    this._summary = el('div', 'nj-summary');

    const filters = el('div', 'nj-filters');
    this._status = this._select('Status', STATUS_FILTERS);
    this._platform = this._select('Platform', [['', 'All platforms']]);
    filters.append(this._status, this._platform);

    this._banner = el('div', 'nj-banner');
    this._banner.hidden = true;
    this._list = el('ul', 'nj-list');
    this._empty = el('p', 'nj-empty');
    this._empty.hidden = true;

    this.node.append(header, this._summary, filters, this._banner, this._empty, this._list);

    this._poll = new Poll({
      auto: true,
      factory: () => this.update_(),
      frequency: { interval: ACTIVE_INTERVAL, backoff: true, max: MAX_INTERVAL },
      name: 'neural-jupyter:jobs',
      standby: () => (this.isVisible ? 'when-hidden' : true)
    });
  }

  /** The jobs shown last (by id). */
  get jobs(): ReadonlyMap<string, IJob> {
    return this._jobs;
  }

  dispose(): void {
    this._poll.dispose();
    super.dispose();
  }

  protected onAfterShow(): void {
    void this._poll.refresh();
  }

  private _select(label: string, options: [string, string][]): HTMLSelectElement {
    const select = el('select', 'nj-select');
    select.setAttribute('aria-label', label);
    for (const [value, text] of options) {
      const option = el('option', '', text);
      option.value = value;
      select.appendChild(option);
    }
    select.addEventListener('change', () => void this._poll.refresh());
    return select;
  }

  private _filters(): IFilters {
    return { status: this._status.value, platform: this._platform.value };
  }

  /** One poll: fetch, render, and pick the next interval. Rejects (backoff) on failure. */
  private async update_(): Promise<void> {
    let jobs: IJob[];
    try {
      jobs = (await listJobs(this._filters())).jobs;
    } catch (error) {
      this._showBanner(error);
      throw error;
    }
    this._banner.hidden = true;
    this._render(jobs);
    const active = jobs.some(job => !job.terminal);
    const interval = active ? ACTIVE_INTERVAL : IDLE_INTERVAL;
    if (this._poll.frequency.interval !== interval) {
      this._poll.frequency = { interval, backoff: true, max: MAX_INTERVAL };
    }
  }

  private _showBanner(error: unknown): void {
    const message = error instanceof ApiError ? error.message : String(error);
    this._banner.textContent = `Cannot list jobs: ${message}. Retrying…`;
    this._banner.hidden = false;
  }

  private _render(jobs: IJob[]): void {
    this._jobs = new Map(jobs.map(job => [job.id, job]));
    this._updatePlatforms(jobs);
    const running = jobs.filter(job => !job.terminal).length;
    const spending = jobs
      .filter(job => !job.terminal && job.cost && job.cost.usd !== null)
      .reduce((sum, job) => sum + (job.cost!.usd as number), 0);
    this._summary.textContent =
      `${jobs.length} job${jobs.length === 1 ? '' : 's'} · ${running} active` +
      (spending > 0 ? ` · ${formatUsd(spending)} so far` : '');

    const filtered = this._status.value !== '' || this._platform.value !== '';
    this._empty.hidden = jobs.length > 0;
    this._empty.textContent = filtered
      ? 'No job matches these filters.'
      : 'No jobs yet. Train with %%neural_run or %neural_submit in any notebook: every job of every kernel shows up here.';

    const rows: HTMLElement[] = [];
    const now = Date.now();
    for (const job of jobs) {
      const key = JSON.stringify(job) + timeLine(job, now);
      const known = this._rows.get(job.id);
      if (known && known.key === key && !known.busy) {
        rows.push(known.node);
        continue;
      }
      const node = this._row(job, now);
      this._rows.set(job.id, { key, node, busy: false });
      rows.push(node);
    }
    for (const id of [...this._rows.keys()]) {
      if (!this._jobs.has(id)) {
        this._rows.delete(id);
      }
    }
    this._list.replaceChildren(...rows);
  }

  private _updatePlatforms(jobs: IJob[]): void {
    for (const job of jobs) {
      this._platforms.add(job.platform);
    }
    const have = new Set([...this._platform.options].map(option => option.value));
    for (const platform of [...this._platforms].sort()) {
      if (!have.has(platform)) {
        const option = el('option', '', platform);
        option.value = platform;
        this._platform.appendChild(option);
      }
    }
  }

  private _row(job: IJob, now: number): HTMLElement {
    const status = job.status.toLowerCase();
    const row = el('li', `nj-job nj-status-${status}`);
    row.dataset.jobId = job.id;
    row.dataset.status = job.status;

    const head = el('div', 'nj-job-head');
    const badge = el('span', `nj-badge nj-badge-${status}`, status);
    badge.title = job.exit_code !== null ? `exit code ${job.exit_code}` : job.status;
    const name = el('span', 'nj-job-name', job.name);
    name.title = job.model && job.model !== job.name ? `${job.name} (model ${job.model})` : job.name;
    const platform = el('span', 'nj-platform', job.platform);
    platform.title = [job.platform, job.instance_type, job.host && `on ${job.host}`]
      .filter(Boolean)
      .join(' · ');
    head.append(badge, name, platform);
    row.appendChild(head);

    const sub = el('div', 'nj-job-sub');
    const copy = el('button', 'nj-icon-button nj-copy');
    copy.type = 'button';
    copy.title = `Copy “${job.attach}” (paste it in a notebook cell to watch this job there)`;
    copy.setAttribute('aria-label', `Copy ${job.attach}`);
    copy.appendChild(copyIcon.element({ tag: 'span', className: 'nj-icon' }));
    copy.addEventListener('click', () => {
      Clipboard.copyToSystem(job.attach);
      copy.replaceChildren(checkIcon.element({ tag: 'span', className: 'nj-icon' }));
      copy.classList.add('nj-copied');
      window.setTimeout(() => {
        copy.replaceChildren(copyIcon.element({ tag: 'span', className: 'nj-icon' }));
        copy.classList.remove('nj-copied');
      }, 1500);
    });
    const when = el('span', 'nj-when', timeLine(job, now));
    when.title = timeTitle(job);
    sub.append(el('code', 'nj-id', job.id), copy, when);
    row.appendChild(sub);

    const progressText = progressLine(job);
    if (progressText || !job.terminal) {
      const progress = el('div', 'nj-progress');
      const bar = el('div', 'nj-bar');
      const fill = el('div', 'nj-bar-fill');
      const fraction = job.progress ? job.progress.fraction : null;
      if (fraction === null) {
        bar.classList.add('nj-bar-unknown');
      } else {
        fill.style.width = `${Math.round(fraction * 1000) / 10}%`;
      }
      bar.appendChild(fill);
      progress.append(bar, el('span', 'nj-progress-text', progressText || 'waiting for the first epoch'));
      row.appendChild(progress);
    }

    const metrics = headlineMetrics(job.metrics);
    if (metrics.length) {
      const list = el('dl', 'nj-metrics');
      for (const [key, value] of metrics) {
        const item = el('div', 'nj-metric');
        item.append(el('dt', '', key), el('dd', '', value));
        list.appendChild(item);
      }
      row.appendChild(list);
    }

    if (job.cost) {
      const cost = job.cost;
      const line = el('div', 'nj-cost');
      line.title = cost.note;
      const rate = [job.instance_type, cost.hourly_usd !== null ? `${formatUsd(cost.hourly_usd)}/h` : null]
        .filter(Boolean)
        .join(' · ');
      if (cost.usd === null) {
        line.append(el('span', 'nj-cost-total', 'cost unknown'), el('span', 'nj-cost-rate', cost.note));
      } else {
        line.append(
          el('span', 'nj-cost-total', `${formatUsd(cost.usd)} so far`),
          el('span', 'nj-cost-rate', rate)
        );
      }
      row.appendChild(line);
    }

    const error = job.error && job.error.toLowerCase() !== status ? job.error : null;
    const message = error || job.note || (job.terminal ? null : job.message);
    if (message) {
      const kind = error ? 'nj-error' : 'nj-note';
      const line = el('div', `nj-message ${kind}`, message);
      line.title = message;
      row.appendChild(line);
    }

    const actions = el('div', 'nj-actions');
    if (!job.terminal) {
      const cancel = this._button('Cancel', 'nj-cancel', () => this._cancel(job, cancel));
      cancel.title = job.paid
        ? 'Stop this paid job (asks first)'
        : 'Stop this job (its whole process tree)';
      actions.appendChild(cancel);
    }
    actions.appendChild(this._button('Logs', 'nj-logs', () => this.actions.openLogs(job)));
    actions.appendChild(
      this._button('Dashboard', 'nj-dashboard', () => this.actions.openDashboard(job))
    );
    row.appendChild(actions);
    return row;
  }

  private _button(label: string, className: string, onClick: () => void): HTMLButtonElement {
    const button = el('button', `nj-button ${className}`, label);
    button.type = 'button';
    button.addEventListener('click', onClick);
    return button;
  }

  private async _cancel(job: IJob, button: HTMLButtonElement): Promise<void> {
    if (job.paid) {
      const cost =
        job.cost && job.cost.usd !== null
          ? ` It has cost about ${formatUsd(job.cost.usd)} so far (${formatUsd(job.cost.hourly_usd)}/h, list price).`
          : '';
      const where = job.instance_type ? `${job.platform} (${job.instance_type})` : job.platform;
      const result = await showDialog({
        title: 'Cancel a paid job?',
        body: `${job.name} (${job.id}) runs on ${where}.${cost} Cancelling stops it for good; its outputs so far stay where the platform put them.`,
        buttons: [
          Dialog.cancelButton({ label: 'Keep running' }),
          Dialog.warnButton({ label: 'Cancel job' })
        ],
        defaultButton: 0 // Enter keeps the job running
      });
      if (!result.button.accept) {
        return;
      }
    }
    const row = this._rows.get(job.id);
    if (row) {
      row.busy = true;
    }
    button.disabled = true;
    button.textContent = 'Cancelling…';
    try {
      await cancelJob(job.id);
    } catch (error) {
      const hint = error instanceof ApiError && error.hint ? `\n${error.hint}` : '';
      await showErrorMessage(`Could not cancel ${job.id}`, `${String((error as Error).message)}${hint}`);
    } finally {
      if (row) {
        row.busy = false;
      }
      await this._poll.refresh();
    }
  }

  private _poll: Poll;
  private _status: HTMLSelectElement;
  private _platform: HTMLSelectElement;
  private _platforms = new Set<string>();
  private _summary: HTMLElement;
  private _banner: HTMLElement;
  private _empty: HTMLElement;
  private _list: HTMLUListElement;
  private _jobs = new Map<string, IJob>();
  private _rows = new Map<string, { key: string; node: HTMLElement; busy: boolean }>();
}

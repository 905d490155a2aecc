/** Small text helpers for the sidebar (numbers, money, times). */
import { IJob, Metric } from './api';

const PREFERRED = ['loss', 'val_loss', 'accuracy', 'val_accuracy'];

/** The metrics worth a glance: loss and accuracy first, at most `count`. */
export function headlineMetrics(
  metrics: Record<string, Metric>,
  count = 4
): [string, string][] {
  const names = Object.keys(metrics).filter(name => name !== 'epoch' && name !== 'lr');
  names.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  return names.slice(0, count).map(name => [name, formatNumber(metrics[name])]);
}

function rank(name: string): number {
  const index = PREFERRED.indexOf(name);
  return index === -1 ? PREFERRED.length : index;
}

export function formatNumber(value: Metric): string {
  if (value === null || value === undefined) {
    return '–';
  }
  if (typeof value === 'string') {
    return value;
  }
  if (Number.isInteger(value)) {
    return String(value);
  }
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) {
    return value.toExponential(2);
  }
  return value.toPrecision(4).replace(/\.?0+$/, '');
}

export function formatUsd(value: number | null | undefined): string {
  if (value === null || value === undefined) {
    return '?';
  }
  return value < 0.01 && value > 0 ? '<$0.01' : `$${value.toFixed(2)}`;
}

/** "12 s", "4 min", "3 h 05 min", "2 d". */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) {
    return `${s} s`;
  }
  const minutes = Math.floor(s / 60);
  if (minutes < 60) {
    return `${minutes} min`;
  }
  const hours = Math.floor(minutes / 60);
  if (hours < 48) {
    return `${hours} h ${String(minutes % 60).padStart(2, '0')} min`;
  }
  return `${Math.floor(hours / 24)} d`;
}

/** "running 4 min", "ended 2 h 10 min ago", "queued 12 s" (details in `timeTitle`). */
export function timeLine(job: IJob, now: number = Date.now()): string {
  const finished = at(job.finished_at);
  const started = at(job.started_at);
  if (!isNaN(finished)) {
    return `ended ${formatDuration((now - finished) / 1000)} ago`;
  }
  if (!isNaN(started)) {
    return `running ${formatDuration((now - started) / 1000)}`;
  }
  return `queued ${formatDuration((now - at(job.created_at)) / 1000)}`;
}

/** Created / started / ended times and the run time, for a tooltip. */
export function timeTitle(job: IJob): string {
  const lines = [`created ${new Date(at(job.created_at)).toLocaleString()}`];
  const started = at(job.started_at);
  const finished = at(job.finished_at);
  if (!isNaN(started)) {
    lines.push(`started ${new Date(started).toLocaleString()}`);
  }
  if (!isNaN(finished)) {
    lines.push(`ended ${new Date(finished).toLocaleString()}`);
    if (!isNaN(started)) {
      lines.push(`ran ${formatDuration((finished - started) / 1000)}`);
    }
  }
  return lines.join('\n');
}

function at(text: string | null): number {
  return text ? Date.parse(text) : NaN;
}

export function progressLine(job: IJob): string {
  const progress = job.progress;
  if (!progress || progress.epochs === null) {
    return '';
  }
  const percent =
    progress.fraction === null ? '' : ` · ${Math.floor(progress.fraction * 100)}%`;
  if (progress.epoch === null) {
    // a job the server did not follow: only the plan (and, when it succeeded, the end) is known
    if (job.terminal) {
      return progress.fraction === 1 ? 'done' : '';
    }
    return `epoch ?/${progress.epochs}${percent}`;
  }
  return `epoch ${progress.epoch}/${progress.epochs}${percent}`;
}

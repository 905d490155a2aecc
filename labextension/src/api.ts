/**
 * The REST API of the neural-jupyter server extension (neural_jupyter/server).
 *
 * Requests go through ServerConnection, so they carry Jupyter's own credentials and the
 * XSRF token exactly like JupyterLab's built-in requests.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface IProgress {
  epoch: number | null;
  epochs: number | null;
  batch: number | null;
  batches: number | null;
  fraction: number | null;
}

export interface ICost {
  usd: number | null;
  hourly_usd: number | null;
  running?: boolean;
  note: string;
}

export type Metric = number | string | null;

export interface IJob {
  id: string;
  name: string;
  model: string | null;
  platform: string;
  status: string;
  terminal: boolean;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  updated_at: string;
  progress: IProgress | null;
  metrics: Record<string, Metric>;
  message: string | null;
  error: string | null;
  exit_code: number | null;
  instance_type: string | null;
  paid: boolean;
  cost: ICost | null;
  sweep_id: string | null;
  host: string | null;
  attach: string;
  live: boolean;
  note: string | null;
  cancelled?: boolean;
}

export interface IJobDetail extends IJob {
  history: Record<string, Metric>[];
}

export interface IFilters {
  status?: string;
  platform?: string;
}

/** An error the server explained (its message and hint), or a network failure. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly hint: string | null = null
  ) {
    super(message);
  }
}

const API = 'neural-jupyter/api';

async function request<T>(
  path: string,
  init: RequestInit = {},
  query: Record<string, string> = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const search = new URLSearchParams(query).toString();
  const url = URLExt.join(settings.baseUrl, API, path) + (search ? `?${search}` : '');
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ApiError(`cannot reach the Jupyter server: ${String(error)}`, 0);
  }
  const text = await response.text();
  let body: any = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message =
      (body && body.message) ||
      (response.status === 404 && !body
        ? 'the neural-jupyter server extension is not enabled (jupyter server extension list)'
        : `${response.status} ${response.statusText}`);
    throw new ApiError(message, response.status, body ? body.hint : null);
  }
  return body as T;
}

export function listJobs(filters: IFilters = {}): Promise<{ jobs: IJob[] }> {
  const query: Record<string, string> = {};
  if (filters.status) {
    query.status = filters.status;
  }
  if (filters.platform) {
    query.platform = filters.platform;
  }
  return request('jobs', {}, query);
}

export function getJob(id: string): Promise<IJobDetail> {
  return request(`jobs/${encodeURIComponent(id)}`);
}

export function jobLogs(id: string, tail = 500): Promise<{ lines: string[] }> {
  return request(`jobs/${encodeURIComponent(id)}/logs`, {}, { tail: String(tail) });
}

export function cancelJob(id: string): Promise<IJob> {
  return request(`jobs/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
}

export function dashboardUrl(id: string): Promise<{ url: string }> {
  return request(`jobs/${encodeURIComponent(id)}/dashboard`);
}

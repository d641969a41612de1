/**
 * The lab's server API (`/labnotebook/api/...`, handlers of the labnotebook Jupyter server
 * extension). Every request goes through ServerConnection, which adds the server's token and
 * the `X-XSRFToken` header, so the server's XSRF check passes for the member's own pages only.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export const API_ROOT = 'labnotebook/api';

/**
 * Call one endpoint; the parsed JSON reply. A refusal raises a ResponseError whose message is
 * the server's own text (what went wrong and what to do), ready for showErrorMessage.
 */
export async function requestAPI<T>(
  settings: ServerConnection.ISettings,
  endpoint: string,
  init: RequestInit = {}
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, API_ROOT, endpoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  let data: any = text;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      // Not JSON (a proxy's error page): its text is still the best message there is.
    }
  }
  if (!response.ok) {
    const message =
      (data && typeof data === 'object' && data.message) ||
      (typeof data === 'string' && data) ||
      `${response.status} ${response.statusText}`;
    throw new ServerConnection.ResponseError(response, message);
  }
  return data as T;
}

// The API as the dashboard calls it: same origin, the session cookie, and the CSRF header on
// every request that may change state. Answers are the API's envelope {code, message, data}.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return "";
}

// The server's clock minus ours, from the Date header of the latest answer (to the second):
// lease expiries and ages are counted on the server's clock.
let skew = 0;
export const serverSkew = () => skew;

export async function call(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["X-CSRF-Token"] = cookie("fw_csrf");
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const date = Date.parse(response.headers.get("Date") || "");
  if (!Number.isNaN(date)) skew = date + 500 - Date.now();
  let document_ = null;
  try {
    document_ = await response.json();
  } catch {
    throw new ApiError(response.status, 0, `HTTP ${response.status}: not a JSON answer`);
  }
  if (!response.ok || document_.code !== 0) {
    throw new ApiError(response.status, document_.code, document_.message || `HTTP ${response.status}`);
  }
  return document_.data;
}

export const signIn = (token) => call("/api/v1/session", { method: "POST", body: { token } });
export const signOut = () => call("/api/v1/session", { method: "DELETE" });
export const whoami = () => call("/api/v1/session");
export const releases = (page = 1, pageSize = 50) =>
  call(`/api/v1/releases?page=${page}&pageSize=${pageSize}`);
export const release = (id) => call(`/api/v1/releases/${id}`);
export const events = (id, afterId = 0) =>
  call(`/api/v1/releases/${id}/events?afterId=${afterId}&limit=1000`);
export const nodes = () => call("/api/v1/nodes");
export const fleet = () => call("/api/v1/fleet");
export const verb = (id, name, body) =>
  call(`/api/v1/releases/${id}/${name}`, { method: "POST", body });

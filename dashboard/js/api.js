// REST calls with the browser session: the HttpOnly cookie goes by itself; state-changing
// requests add the session's CSRF token (from GET /auth/session) as X-CSRF-Token.

let csrf = '';
let onSignedOut = () => {};

export class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field || null;
  }
}

export function setCsrf(token) {
  csrf = token || '';
}

export function whenSignedOut(fn) {
  onSignedOut = fn;
}

export async function request(method, path, body, { raw = false } = {}) {
  const headers = {};
  let payload;
  if (method !== 'GET') headers['X-CSRF-Token'] = csrf;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: payload, credentials: 'same-origin' });
  } catch (err) {
    throw new ApiError(0, 'the coordinator cannot be reached; check your connection');
  }
  if (!resp.ok) {
    let error = { error: `${resp.status} ${resp.statusText}` };
    try {
      error = await resp.json();
    } catch (_) { /* not JSON */ }
    if (resp.status === 401 && !path.startsWith('/auth/')) onSignedOut();
    throw new ApiError(resp.status, error.error, error.field);
  }
  return raw ? resp : resp.json();
}

export const get = (path, opts) => request('GET', path, undefined, opts);
export const post = (path, body) => request('POST', path, body === undefined ? {} : body);
export const patch = (path, body) => request('PATCH', path, body);

// Who is signed in: {account: {id, name, role} | null, csrf}.
export async function session() {
  const info = await get('/auth/session');
  setCsrf(info.csrf);
  return info;
}

export async function signIn(body) {
  const info = await request('POST', '/auth/signin', body);
  setCsrf(info.csrf);
  return info;
}

export async function signOut() {
  await post('/auth/signout');
  setCsrf('');
}

// A short message for everyone (errors of actions without a form of their own).
let toastTimer = null;
export function toast(message, kind = 'error') {
  const el = document.getElementById('toast');
  el.textContent = message;
  el.className = `toast ${kind}`;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 6000);
}

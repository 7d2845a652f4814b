// The course-activity viewer (docs/api.md#viewer): plain JavaScript over the audit API, no
// framework, no build step. Every value from the API is written with textContent, never as
// markup. The token lives in this tab's sessionStorage only and goes out as a Bearer header.

const API_BASE = new URL("../api/v1/audit/course/", document.baseURI);
const TOKEN_KEY = "course-audit.token";
const SIS_PREFIX = "sis_course_id:";
const RECONNECT_MS = 2000;
const SUMMARY_KEYS = 4;

// Canvas's course event types (course_audit/model.py EVENT_RECORDS), in its order.
const EVENT_TYPES = [
  "created", "updated", "concluded", "unconcluded", "published", "unpublished", "claimed",
  "deleted", "restored", "copied_from", "copied_to", "reset_from", "reset_to",
];
// Types whose event names another course, under a `links` key named like the type.
const RELATED = {
  copied_from: "copied from",
  copied_to: "copied to",
  reset_from: "reset from",
  reset_to: "reset to",
};

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("lookup"),
  kind: $("kind"),
  token: $("token"),
  forget: $("forget"),
  target: $("target"),
  targetLabel: $("target-label"),
  start: $("start"),
  end: $("end"),
  user: $("user"),
  source: $("source"),
  perPage: $("per-page"),
  types: $("types"),
  show: $("show"),
  error: $("error"),
  status: $("status"),
  results: $("results"),
  resultsTitle: $("results-title"),
  rows: $("rows"),
  empty: $("empty"),
  more: $("more"),
  live: $("live"),
  exportFormat: $("export-format"),
  exportButton: $("export"),
  dialog: $("detail"),
  dialogTitle: $("detail-title"),
  dialogClose: $("detail-close"),
  facts: $("detail-facts"),
  related: $("detail-related"),
  changes: $("detail-changes"),
  changeRows: $("detail-rows"),
  noChanges: $("detail-nochanges"),
};

class UserError extends Error {}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// What is on screen: one lookup (generation), its resolved path and the events shown.
let view = newView(null);
let generation = 0;
let returnFocus = null;

function newView(target) {
  return {
    target,          // {kind, label, path} of the lookup, or null
    resolved: null,  // the numeric path from the Link header's rel="current"
    filters: null,   // URLSearchParams: start_time, end_time, event_type...
    next: null,      // URL of the next page, or null
    events: new Map(),
    users: new Map(),
    courses: new Map(),
    live: null,      // {controller, lastId} while the live tail is on
    loading: false,  // a page request is under way
  };
}

// ------------------------------------------------------------------ messages

// The alert region stays in the page (empty when there is nothing to say), so that a screen
// reader announces each new message.
function showError(message) {
  ui.error.textContent = message;
}

function clearError() {
  ui.error.textContent = "";
}

function say(message) {
  ui.status.textContent = message;
}

function reportFailure(error, context) {
  if (error instanceof UserError || error instanceof ApiError) {
    showError(context ? `${context}: ${error.message}` : error.message);
  } else if (error && error.name === "AbortError") {
    // stopped on purpose
  } else {
    showError(`${context || "Request failed"}: ${error && error.message ? error.message : error}`);
  }
}

// ------------------------------------------------------------------ token

function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

function storeToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage refused (a private window): the field still holds it for this page
  }
}

function currentToken() {
  const token = ui.token.value.trim();
  if (!token) throw new UserError("Enter an API token first.");
  return token;
}

// ------------------------------------------------------------------ HTTP

async function errorOf(response) {
  let message = `the server answered ${response.status}`;
  try {
    const body = await response.json();
    if (body && Array.isArray(body.errors) && body.errors.length) {
      message = body.errors.map((e) => String(e && e.message)).join(" ");
    }
  } catch {
    // not JSON: keep the status
  }
  return new ApiError(response.status, message);
}

async function apiFetch(url, { headers = {}, signal } = {}) {
  const all = new Headers(headers);
  all.set("Authorization", `Bearer ${currentToken()}`);
  const response = await fetch(url, {
    headers: all,
    signal,
    credentials: "omit",
    cache: "no-store",
    redirect: "error",
  });
  if (!response.ok) throw await errorOf(response);
  return response;
}

// RFC 8288 Link header -> {rel: url}.
export function parseLink(header) {
  const out = {};
  if (!header) return out;
  for (const part of header.split(/,(?=\s*<)/)) {
    const match = /^\s*<([^>]*)>(.*)$/.exec(part);
    if (!match) continue;
    const rel = /;\s*rel\s*=\s*(?:"([^"]*)"|([^\s;,]+))/i.exec(match[2]);
    if (!rel) continue;
    for (const name of (rel[1] ?? rel[2]).trim().split(/\s+/)) {
      if (name && !(name.toLowerCase() in out)) out[name.toLowerCase()] = match[1];
    }
  }
  return out;
}

// A URL the API gave (absolute, maybe with a public base URL) as one on this page's origin.
function here(url) {
  const given = new URL(url, document.baseURI);
  return new URL(given.pathname + given.search, window.location.origin);
}

// ------------------------------------------------------------------ the form

function kind() {
  return ui.kind.value;
}

const TARGETS = {
  course: ["Course id", "A number, or sis_course_id:…"],
  sis: ["SIS course id", "As the SIS knows it, e.g. SIS-1001"],
  account: ["Account id", "A number: the courses directly in that account"],
};

function describeKind() {
  const [label, help] = TARGETS[kind()];
  ui.targetLabel.textContent = label;
  $("target-help").textContent = help;
  ui.target.inputMode = kind() === "course" || kind() === "account" ? "numeric" : "text";
}

function targetOf() {
  const raw = ui.target.value.trim();
  const chosen = kind();
  if (!raw) throw new UserError(`Enter ${chosen === "account" ? "an account" : "a course"} id.`);
  if (chosen === "account") {
    if (!/^[0-9]{1,19}$/.test(raw)) throw new UserError("An account id is a number, e.g. 100.");
    return { kind: "account", label: `Account ${raw}`, path: `accounts/${raw}` };
  }
  if (chosen === "sis" || raw.startsWith(SIS_PREFIX)) {
    const sis = raw.startsWith(SIS_PREFIX) ? raw.slice(SIS_PREFIX.length) : raw;
    if (!sis) throw new UserError("Enter the SIS course id after sis_course_id:.");
    return {
      kind: "course",
      label: `Course ${SIS_PREFIX}${sis}`,
      path: `courses/${SIS_PREFIX}${encodeURIComponent(sis)}`,
    };
  }
  if (!/^[0-9]{1,19}$/.test(raw)) {
    throw new UserError("A course id is a number (or sis_course_id:<SIS id>).");
  }
  return { kind: "course", label: `Course ${raw}`, path: `courses/${raw}` };
}

// A date input's day, from midnight to its last second in this browser's time zone.
function dayBound(value, last) {
  const [year, month, day] = value.split("-").map(Number);
  const when = last
    ? new Date(year, month - 1, day, 23, 59, 59)
    : new Date(year, month - 1, day, 0, 0, 0);
  return when.toISOString().replace(/\.\d{3}Z$/, "Z");
}

function checkedTypes() {
  return [...ui.types.querySelectorAll("input[type=checkbox]:checked")].map((box) => box.value);
}

function filtersOf() {
  const params = new URLSearchParams();
  if (ui.start.value && ui.end.value && ui.start.value > ui.end.value) {
    throw new UserError("The From date is after the To date.");
  }
  if (ui.start.value) params.set("start_time", dayBound(ui.start.value, false));
  if (ui.end.value) params.set("end_time", dayBound(ui.end.value, true));
  for (const type of checkedTypes()) params.append("event_type", type);
  const user = ui.user.value.trim();
  if (user) {
    if (!/^[0-9]{1,19}$/.test(user)) throw new UserError("A user id is a number, e.g. 5004.");
    params.set("user_id", user);
  }
  const source = ui.source.value.trim();
  if (source) params.set("event_source", source);
  return params;
}

// Whether an event (from the live tail) passes the look-up's filters; the server applies them
// too, this keeps the table consistent whatever it sends.
function passes(event) {
  const types = view.filters.getAll("event_type");
  if (types.length && !types.includes(event.event_type)) return false;
  const user = view.filters.get("user_id");
  if (user !== null && String(event.links ? event.links.user : "") !== user) return false;
  const source = view.filters.get("event_source");
  return source === null || event.event_source === source;
}

function buildTypes() {
  for (const type of EVENT_TYPES) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.name = "event_type";
    box.value = type;
    label.append(box, ` ${type.replace("_", " ")}`);
    ui.types.append(label);
  }
}

// ------------------------------------------------------------------ rendering

const timeFormat = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "2-digit",
  day: "2-digit",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hourCycle: "h23",
  timeZoneName: "short",
  numberingSystem: "latn",
});

// `YYYY-MM-DD HH:MM:SS ZONE` in the browser's time zone, whatever its locale's order.
export function localTime(text) {
  const when = new Date(text);
  if (Number.isNaN(when.getTime())) return String(text);
  const part = {};
  for (const { type, value } of timeFormat.formatToParts(when)) part[type] = value;
  const zone = part.timeZoneName ? ` ${part.timeZoneName}` : "";
  return `${part.year}-${part.month}-${part.day} ${part.hour}:${part.minute}:${part.second}${zone}`;
}

function remember(linked) {
  if (!linked) return;
  for (const user of linked.users || []) view.users.set(String(user.id), user);
  for (const course of linked.courses || []) view.courses.set(String(course.id), course);
}

function whoOf(event) {
  const id = event.links ? event.links.user : null;
  if (id === null || id === undefined) return "(no user)";
  const user = view.users.get(String(id));
  if (!user) return `user ${id}`;
  const name = user.name || user.short_name || `user ${id}`;
  return user.login_id ? `${name} (${user.login_id})` : name;
}

function courseName(id) {
  const course = view.courses.get(String(id));
  return course && course.name ? `course ${id} (${course.name})` : `course ${id}`;
}

function relatedOf(event) {
  if (!(event.event_type in RELATED) || !event.links) return null;
  const id = event.links[event.event_type];
  return id === null || id === undefined ? null : id;
}

function changesOf(event) {
  const data = event.event_data && typeof event.event_data === "object" ? event.event_data : {};
  return Object.entries(data).filter(([, value]) => Array.isArray(value) && value.length === 2);
}

function summaryOf(event) {
  const related = relatedOf(event);
  if (related !== null) return `${RELATED[event.event_type]} ${courseName(related)}`;
  const keys = changesOf(event).map(([key]) => key);
  const data = event.event_data || {};
  let text = keys.slice(0, SUMMARY_KEYS).join(", ");
  if (keys.length > SUMMARY_KEYS) text += ` and ${keys.length - SUMMARY_KEYS} more`;
  if (typeof data.created_source === "string") {
    text = text ? `${text}; from ${data.created_source}` : `from ${data.created_source}`;
  }
  return text || "—";
}

function cell(row, label, content, className) {
  const td = document.createElement("td");
  td.dataset.label = label;
  if (className) td.className = className;
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  row.append(td);
}

function rowOf(event) {
  const row = document.createElement("tr");
  // One row is in the tab order at a time (a roving tabindex); arrow keys move between rows.
  row.tabIndex = ui.rows.querySelector("tr[tabindex='0']") ? -1 : 0;
  row.dataset.id = event.id;
  row.dataset.type = event.event_type;
  row.title = "Open this event's details";
  const time = document.createElement("time");
  time.dateTime = event.created_at;
  time.textContent = localTime(event.created_at);
  cell(row, "Time", time, "time");
  const type = document.createElement("span");
  type.className = `badge type-${event.event_type}`;
  type.textContent = String(event.event_type);
  cell(row, "Type", type, "type");
  cell(row, "Who", whoOf(event), "who");
  cell(row, "Source", String(event.event_source ?? ""), "source");
  cell(row, "What changed", summaryOf(event), "what");
  return row;
}

// Adds an event's row (once per event id); `fresh` ones go on top, marked as new.
function addEvent(event, fresh) {
  if (!event || typeof event.id !== "string" || view.events.has(event.id)) return false;
  view.events.set(event.id, event);
  const row = rowOf(event);
  if (fresh) {
    row.classList.add("fresh");
    ui.rows.prepend(row);
  } else {
    ui.rows.append(row);
  }
  ui.empty.hidden = true;
  return true;
}

function countText() {
  const n = view.events.size;
  return `${n} event${n === 1 ? "" : "s"} shown`;
}

// ------------------------------------------------------------------ pages

async function loadPage(url, first) {
  const mine = generation;
  ui.results.setAttribute("aria-busy", "true");
  // aria-disabled, not disabled: a disabled button would drop the keyboard focus.
  view.loading = true;
  ui.more.setAttribute("aria-disabled", "true");
  try {
    const response = await apiFetch(url, { headers: { Accept: "application/json" } });
    const document_ = await response.json();
    if (mine !== generation) return;
    const links = parseLink(response.headers.get("Link"));
    if (first) {
      view.resolved = links.current ? here(links.current).pathname : url.pathname;
      ui.results.hidden = false;
      ui.resultsTitle.textContent = `Events of ${view.target.label}`;
    }
    remember(document_.linked);
    let added = 0;
    const before = ui.rows.lastElementChild;
    for (const event of document_.events || []) if (addEvent(event, false)) added += 1;
    view.next = links.next ? here(links.next) : null;
    const moreHadFocus = document.activeElement === ui.more;
    ui.more.hidden = view.next === null;
    // The last page: "Load more" goes away; focus moves to the first row it brought.
    if (moreHadFocus && ui.more.hidden) {
      focusRow(before ? before.nextElementSibling : ui.rows.firstElementChild);
    }
    ui.empty.hidden = view.events.size > 0;
    say(`${countText()}${view.next ? "; more available" : ""}.`);
    if (!first && added === 0 && view.next === null) say(`${countText()}; no more events.`);
  } catch (error) {
    if (mine === generation) reportFailure(error, first ? view.target.label : "Loading more");
  } finally {
    if (mine === generation) {
      ui.results.removeAttribute("aria-busy");
      view.loading = false;
      ui.more.removeAttribute("aria-disabled");
    }
  }
}

async function lookUp(focusResults) {
  clearError();
  stopLive();
  let target;
  let filters;
  try {
    currentToken();
    target = targetOf();
    filters = filtersOf();
  } catch (error) {
    reportFailure(error);
    (error instanceof UserError && !ui.token.value.trim() ? ui.token : ui.target).focus();
    return;
  }
  generation += 1;
  view = newView(target);
  view.filters = filters;
  ui.rows.replaceChildren();
  ui.more.hidden = true;
  ui.empty.hidden = true;
  const params = new URLSearchParams(filters);
  params.set("per_page", ui.perPage.value);
  say(`Loading ${target.label}…`);
  await loadPage(new URL(`${target.path}?${params}`, API_BASE), true);
  if (focusResults && !ui.results.hidden) ui.resultsTitle.focus();
}

// ------------------------------------------------------------------ detail dialog

function fact(term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  if (value instanceof Node) dd.append(value);
  else dd.textContent = value;
  ui.facts.append(dt, dd);
}

function shownValue(value) {
  const span = document.createElement("span");
  if (value === null || value === undefined) {
    span.className = "none";
    span.textContent = "(none)";
  } else if (typeof value === "string") {
    span.textContent = value === "" ? "(empty)" : value;
    if (value === "") span.className = "none";
  } else {
    span.textContent = JSON.stringify(value);
  }
  return span;
}

function openDetail(id, row) {
  const event = view.events.get(id);
  if (!event) return;
  ui.dialogTitle.textContent = `${event.event_type} — ${localTime(event.created_at)}`;
  ui.facts.replaceChildren();
  fact("Time (yours)", localTime(event.created_at));
  fact("Time (as stored)", String(event.created_at));
  fact("Type", String(event.event_type));
  fact("Who", whoOf(event));
  fact("Source", String(event.event_source ?? ""));
  const links = event.links || {};
  if (links.course !== undefined) fact("Course", courseName(links.course));
  if (links.page_view) fact("Page view", String(links.page_view));
  if (links.sis_batch !== null && links.sis_batch !== undefined) {
    fact("SIS batch", String(links.sis_batch));
  }
  const data = event.event_data || {};
  if (typeof data.created_source === "string") fact("Created from", data.created_source);
  fact("Event id", String(event.id));

  ui.related.replaceChildren();
  const related = relatedOf(event);
  if (related !== null) {
    const p = document.createElement("p");
    p.textContent = `This course was ${RELATED[event.event_type]} ${courseName(related)}. `;
    const open = document.createElement("button");
    open.type = "button";
    open.className = "link";
    open.dataset.course = String(related);
    open.textContent = `Show course ${related}'s events`;
    open.addEventListener("click", () => showCourse(String(related)));
    p.append(open);
    ui.related.append(p);
  }

  ui.changeRows.replaceChildren();
  const changes = changesOf(event);
  for (const [key, [before, after]] of changes) {
    const tr = document.createElement("tr");
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = key;
    const old = document.createElement("td");
    old.className = "old";
    old.append(shownValue(before));
    const arrow = document.createElement("td");
    arrow.className = "arrow";
    arrow.setAttribute("aria-hidden", "true");
    arrow.textContent = "→";
    const now = document.createElement("td");
    now.className = "new";
    now.append(shownValue(after));
    tr.append(name, old, arrow, now);
    ui.changeRows.append(tr);
  }
  ui.changes.hidden = changes.length === 0;
  ui.noChanges.hidden = changes.length > 0;
  returnFocus = row;
  ui.dialog.showModal();
  ui.dialogClose.focus();
}

function showCourse(id) {
  ui.kind.value = "course";
  describeKind();
  ui.target.value = id;
  returnFocus = null;
  ui.dialog.close();
  lookUp(true);
}

// ------------------------------------------------------------------ live tail

function setLiveButton(on) {
  ui.live.setAttribute("aria-pressed", on ? "true" : "false");
  ui.live.textContent = on ? "Live: on" : "Live: off";
}

function stopLive() {
  if (view.live) {
    view.live.controller.abort();
    view.live = null;
  }
  setLiveButton(false);
}

function wait(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

// text/event-stream (the HTML standard's format) from a fetch() body: calls `onMessage` with
// {event, data, id} for each dispatched message. EventSource cannot send the Authorization
// header, hence this reader.
export async function readEventStream(body, onMessage) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  let name = "";
  let lastId = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (;;) {
      const end = /\r\n|\r|\n/.exec(buffer);
      // A lone \r at the end may be the first half of \r\n: wait for the next chunk.
      if (!end || (end[0] === "\r" && end.index === buffer.length - 1)) break;
      const line = buffer.slice(0, end.index);
      buffer = buffer.slice(end.index + end[0].length);
      if (line === "") {
        if (data.length) onMessage({ event: name || "message", data: data.join("\n"), id: lastId });
        data = [];
        name = "";
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "data") data.push(text);
      else if (field === "event") name = text;
      else if (field === "id" && !text.includes("\0")) lastId = text;
    }
  }
}

function streamUrl() {
  // The filters, not the date range: the tail shows what is stored from now on.
  const params = new URLSearchParams(view.filters);
  params.delete("start_time");
  params.delete("end_time");
  const query = params.toString();
  return new URL(`${view.resolved}/stream${query ? `?${query}` : ""}`, window.location.origin);
}

async function runLive(live) {
  while (view.live === live) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (live.lastId) headers["Last-Event-ID"] = live.lastId;
      const response = await apiFetch(streamUrl(), { headers, signal: live.controller.signal });
      say("Live: connected; new events appear at the top.");
      let ended = null;
      await readEventStream(response.body, (message) => {
        if (view.live !== live) return;
        if (message.id) live.lastId = message.id;
        let body;
        try {
          body = JSON.parse(message.data);
        } catch {
          return;
        }
        if (message.event === "event") {
          if (!passes(body)) return;
          if (addEvent(body, true)) say(`Live: new ${body.event_type} event. ${countText()}.`);
        } else if (message.event === "error") {
          // The server ends the stream for good (a revoked token ...): say why, do not retry.
          const errors = body && Array.isArray(body.errors) ? body.errors : [];
          ended = errors.map((e) => String(e && e.message)).join(" ") || "the stream ended";
        }
      });
      if (ended !== null) {
        if (view.live === live) {
          showError(`Live: ${ended}`);
          stopLive();
        }
        return;
      }
    } catch (error) {
      if (view.live !== live || live.controller.signal.aborted) return;
      if (error instanceof ApiError && error.status < 500) {
        reportFailure(error, "Live");
        stopLive();
        return;
      }
    }
    if (view.live !== live) return;
    say("Live: connection lost; reconnecting…");
    await wait(RECONNECT_MS, live.controller.signal);
  }
}

function startLive() {
  if (!view.resolved) return;
  clearError();
  try {
    currentToken();
  } catch (error) {
    reportFailure(error);
    return;
  }
  // From the newest event shown, when the list reaches up to now (no To date): what arrived
  // since the page was read comes first, then each new event as it is stored.
  const newest = view.filters.has("end_time") ? null : ui.rows.firstElementChild?.dataset.id;
  const live = { controller: new AbortController(), lastId: newest || null };
  view.live = live;
  setLiveButton(true);
  say("Live: connecting…");
  runLive(live);
}

// ------------------------------------------------------------------ export

function fileNameOf(disposition) {
  if (!disposition) return null;
  const star = /filename\*\s*=\s*UTF-8''([^;]+)/i.exec(disposition);
  if (star) {
    try {
      return decodeURIComponent(star[1].trim());
    } catch {
      // fall through to the plain name
    }
  }
  const plain = /filename\s*=\s*"?([^";]+)"?/i.exec(disposition);
  return plain ? plain[1].trim() : null;
}

async function downloadExport() {
  if (!view.resolved || ui.exportButton.getAttribute("aria-disabled") === "true") return;
  clearError();
  const format = ui.exportFormat.value;
  const params = new URLSearchParams(view.filters);
  params.set("format", format);
  const url = new URL(`${view.resolved}/export?${params}`, window.location.origin);
  ui.exportButton.setAttribute("aria-disabled", "true");
  say("Preparing the export…");
  try {
    const response = await apiFetch(url);
    const blob = await response.blob();
    const fallback = `${view.resolved.split("/").slice(-2).join("-")}-events.${format}`;
    const name = (fileNameOf(response.headers.get("Content-Disposition")) || fallback)
      .replace(/[\\/]/g, "_");
    const href = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = href;
    link.download = name;
    link.hidden = true;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(href), 60_000);
    say(`Downloaded ${name} (${blob.size} bytes).`);
  } catch (error) {
    reportFailure(error, "Export");
  } finally {
    ui.exportButton.removeAttribute("aria-disabled");
  }
}

// ------------------------------------------------------------------ wiring

function focusRow(row) {
  if (!row) return;
  const current = ui.rows.querySelector("tr[tabindex='0']");
  if (current && current !== row) current.tabIndex = -1;
  row.tabIndex = 0;
  row.focus();
}

function rowFrom(target) {
  const row = target instanceof Element ? target.closest("tr[data-id]") : null;
  return row && ui.rows.contains(row) ? row : null;
}

function start() {
  buildTypes();
  ui.token.value = storedToken();
  ui.resultsTitle.tabIndex = -1;
  describeKind();

  ui.token.addEventListener("input", () => storeToken(ui.token.value.trim()));
  ui.forget.addEventListener("click", () => {
    stopLive();
    storeToken("");
    ui.token.value = "";
    ui.token.focus();
    say("Token forgotten.");
  });
  ui.kind.addEventListener("change", describeKind);
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    lookUp(false);
  });
  ui.more.addEventListener("click", () => {
    if (view.next && !view.loading) loadPage(view.next, false);
  });
  ui.live.addEventListener("click", () => (view.live ? stopLive() : startLive()));
  ui.exportButton.addEventListener("click", downloadExport);

  ui.rows.addEventListener("click", (event) => {
    const row = rowFrom(event.target);
    if (!row) return;
    focusRow(row);
    openDetail(row.dataset.id, row);
  });
  ui.rows.addEventListener("keydown", (event) => {
    const row = rowFrom(event.target);
    if (!row || event.target !== row) return;
    const moves = {
      ArrowDown: row.nextElementSibling,
      ArrowUp: row.previousElementSibling,
      Home: ui.rows.firstElementChild,
      End: ui.rows.lastElementChild,
    };
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      openDetail(row.dataset.id, row);
    } else if (event.key in moves) {
      event.preventDefault();
      focusRow(moves[event.key]);
    }
  });
  ui.rows.addEventListener("focusin", (event) => {
    const row = rowFrom(event.target);
    if (row && row.tabIndex !== 0) focusRow(row);
  });

  ui.dialogClose.addEventListener("click", () => ui.dialog.close());
  // A click on the backdrop (outside the dialog's box) closes it too; Escape does natively.
  ui.dialog.addEventListener("click", (event) => {
    if (event.target !== ui.dialog) return;
    const box = ui.dialog.getBoundingClientRect();
    const inside = event.clientX >= box.left && event.clientX <= box.right
      && event.clientY >= box.top && event.clientY <= box.bottom;
    if (!inside) ui.dialog.close();
  });
  ui.dialog.addEventListener("close", () => {
    if (returnFocus && returnFocus.isConnected) returnFocus.focus();
    returnFocus = null;
  });
  document.documentElement.dataset.ready = "true";
}

start();

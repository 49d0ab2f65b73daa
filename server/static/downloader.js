// Derivative service: the download button for whole-work PDF and ZIP bundles (docs/browser.md).
//
// A page loads this module once and marks each signed download link:
//
//   <script type="module" src="https://SERVICE/downloader.js"></script>
//   <a data-derivatives-download href="SIGNED LINK">Download PDF</a>
//
// A click POSTs to the link (no cookies). A bundle that is built already downloads at once; otherwise an
// accessible progress dialog follows the build (Server-Sent Events, or polling every 2 s where EventSource is
// missing) and starts the download when it is done, or shows the reason and a Retry button when it failed.
// Closing the dialog stops watching, not the build: the link downloads at once once the file is ready.
// Without JavaScript the link still works: the service answers a GET with a page that waits, then redirects.
//
// No dependencies, no build step, nothing global. Under a strict Content-Security-Policy it needs only
// `script-src` for the service: it sets no style attribute and injects no <style> element (its styles are one
// constructed stylesheet, which a page's own CSS overrides: every selector is wrapped in :where()).

const LINKS = "a[data-derivatives-download]";
const POLL_MS = 2000;
const FINAL_STAGES = new Set(["STAGE_SUCCEEDED", "STAGE_FAILED"]);

const CSS = `
:where(a[data-derivatives-download]) {
  display: inline-block; padding: 0.3em 0.9em; border: 1px solid currentColor; border-radius: 0.3em;
  line-height: 1.4; text-decoration: none; cursor: pointer;
}
:where(a[data-derivatives-download]:hover) { background: color-mix(in srgb, currentColor 10%, transparent); }
:where(a[data-derivatives-download]:focus-visible) { outline: 2px solid currentColor; outline-offset: 2px; }
:where(a[data-derivatives-download][aria-busy="true"]) { cursor: progress; opacity: 0.7; }
:where(.derivatives-dialog) {
  box-sizing: border-box; width: min(28rem, calc(100vw - 2rem)); padding: 1.25rem 1.5rem;
  border: 1px solid GrayText; border-radius: 0.5rem; color: CanvasText; background: Canvas; font: inherit;
}
:where(.derivatives-dialog)::backdrop { background: rgb(0 0 0 / 0.35); }
:where(.derivatives-dialog [hidden]) { display: none !important; }
:where(.derivatives-dialog h2) { margin: 0 0 0.5rem; font-size: 1.15em; }
:where(.derivatives-dialog p) { margin: 0.5rem 0; }
:where(.derivatives-filename) { overflow-wrap: anywhere; color: GrayText; }
:where(.derivatives-progress) {
  height: 0.75rem; margin: 0.75rem 0; overflow: hidden; border-radius: 0.375rem;
  background: color-mix(in srgb, CanvasText 15%, Canvas);
}
:where(.derivatives-progress-fill) { width: 0; height: 100%; background: #2f6fb3; transition: width 0.3s ease; }
:where(.derivatives-progress:not([aria-valuenow]) .derivatives-progress-fill) { width: 100%; opacity: 0.35; }
:where(.derivatives-error) { color: #b00020; font-weight: 600; }
:where(.derivatives-buttons) { display: flex; gap: 0.5rem; justify-content: flex-end; margin-top: 1rem; }
:where(.derivatives-buttons button) { padding: 0.3em 1em; font: inherit; cursor: pointer; }
:where(.derivatives-visually-hidden) {
  position: absolute !important; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%);
  white-space: nowrap;
}
@media (prefers-reduced-motion: reduce) { :where(.derivatives-progress-fill) { transition: none; } }
`;

let counter = 0;
const uid = (name) => `derivatives-${name}-${++counter}`;

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

function installStyles() {
  try {
    if (typeof CSSStyleSheet !== "function" || !("adoptedStyleSheets" in document)) return;
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(CSS);
    document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
  } catch {
    // Styles are a nicety: the links and the dialog work without them.
  }
}

// One polite live region for the whole page: it outlives the dialog ("Your download has started").
let liveRegion = null;
function announce(text) {
  if (!liveRegion) {
    liveRegion = element("div", { role: "status", class: "derivatives-visually-hidden" });
    document.body.append(liveRegion);
  }
  liveRegion.textContent = "";
  setTimeout(() => {
    liveRegion.textContent = text;
  }, 50);
}

// --- the dialog: one per page, made on first use ---------------------------------------------------------

class ProgressDialog {
  constructor() {
    const headingId = uid("heading");
    const statusId = uid("status");
    this.native = typeof HTMLDialogElement === "function";
    this.root = this.native
      ? element("dialog", { class: "derivatives-dialog", "aria-labelledby": headingId, "aria-describedby": statusId })
      : element("div", {
          class: "derivatives-dialog",
          role: "dialog",
          "aria-modal": "false",
          "aria-labelledby": headingId,
          "aria-describedby": statusId,
          hidden: "",
        });
    this.heading = element("h2", { id: headingId });
    this.filename = element("p", { class: "derivatives-filename", hidden: "" });
    this.status = element("p", { id: statusId, class: "derivatives-status" });
    this.bar = element("div", {
      class: "derivatives-progress",
      role: "progressbar",
      "aria-labelledby": headingId,
      "aria-valuemin": "0",
      "aria-valuemax": "100",
    });
    this.fill = element("div", { class: "derivatives-progress-fill" });
    this.bar.append(this.fill);
    this.error = element("p", { class: "derivatives-error", role: "alert", hidden: "" });
    this.hint = element(
      "p",
      { class: "derivatives-hint" },
      "You can close this window: the file is still being prepared, and the link downloads it once it is ready.",
    );
    this.retry = element("button", { type: "button", class: "derivatives-retry", hidden: "" }, "Retry");
    this.close = element("button", { type: "button", class: "derivatives-close" }, "Close");
    const buttons = element("div", { class: "derivatives-buttons" });
    buttons.append(this.retry, this.close);
    this.root.append(this.heading, this.filename, this.status, this.bar, this.error, this.hint, buttons);
    document.body.append(this.root);

    this.onClose = null;
    this.onRetry = null;
    this.close.addEventListener("click", () => this.hide());
    this.retry.addEventListener("click", () => this.onRetry?.());
    if (this.native) {
      this.root.addEventListener("close", () => this.closed());
    } else {
      this.root.addEventListener("keydown", (event) => {
        if (event.key === "Escape") this.hide();
      });
    }
  }

  get isOpen() {
    return this.native ? this.root.open : !this.root.hidden;
  }

  show(opener) {
    this.opener = opener;
    if (this.isOpen) return;
    if (this.native) {
      this.root.showModal();
    } else {
      this.root.hidden = false;
    }
    this.close.focus();
  }

  hide() {
    if (!this.isOpen) return;
    if (this.native) {
      this.root.close(); // fires "close" -> closed()
    } else {
      this.root.hidden = true;
      this.closed();
    }
  }

  closed() {
    const handler = this.onClose;
    this.onClose = null;
    handler?.();
    if (this.opener?.isConnected && (document.activeElement === document.body || !document.activeElement)) {
      this.opener.focus();
    }
  }

  describe(heading, filename) {
    this.heading.textContent = heading;
    this.filename.textContent = filename || "";
    this.filename.hidden = !filename;
  }

  progress(stage, done, total, attempt) {
    this.error.hidden = true;
    this.retry.hidden = true;
    this.bar.hidden = false;
    this.hint.hidden = false;
    let text;
    if (stage === "STAGE_FINISHING") {
      text = "Finishing…";
      done = total;
    } else if (total > 0 && (done > 0 || stage === "STAGE_RUNNING")) {
      text = `Preparing ${Math.min(done, total)} of ${total} pages`;
    } else if (stage === "STAGE_QUEUED") {
      text = "Waiting for its turn…";
    } else {
      text = "Starting…";
    }
    if (attempt > 1) text += ` (attempt ${attempt})`;
    if (this.status.textContent !== text) this.status.textContent = text;
    if (total > 0) {
      const now = Math.max(0, Math.min(done, total));
      this.bar.setAttribute("aria-valuemax", String(total));
      this.bar.setAttribute("aria-valuenow", String(now));
      this.bar.setAttribute("aria-valuetext", text);
      this.fill.style.width = `${(100 * now) / total}%`; // CSSOM: allowed by a strict CSP, unlike style=""
    } else {
      this.bar.removeAttribute("aria-valuenow"); // indeterminate until the total is known
      this.bar.setAttribute("aria-valuetext", text);
      this.fill.style.width = "";
    }
  }

  failure(message) {
    this.bar.hidden = true;
    this.hint.hidden = true;
    this.status.textContent = "The file could not be prepared.";
    this.error.textContent = message;
    this.error.hidden = false;
    this.retry.hidden = false;
    this.retry.focus();
  }
}

let dialog = null;
const theDialog = () => (dialog ??= new ProgressDialog());

// --- one download: POST, then watch, then the file ------------------------------------------------------

const count = (value) => Number(value ?? 0) || 0; // int64 fields are strings in proto JSON, absent when 0

function kindOf(url) {
  const kind = url.pathname.split("/").pop() || "";
  return /^[a-z]+$/.test(kind) ? kind.toUpperCase() : "file";
}

function errorMessage(body, response) {
  const error = body && typeof body === "object" ? body.error : null;
  let message = (error && typeof error.message === "string" && error.message) || "";
  if (!message) message = `The service answered ${response.status} ${response.statusText}`.trim() + ".";
  if (response.status === 403) message += " Reload the page for a fresh link.";
  return message;
}

class Failure extends Error {}

let current = null;

class Download {
  constructor(link) {
    this.link = link;
    this.url = new URL(link.href, document.baseURI);
    this.kind = kindOf(this.url);
    this.filename = "";
    this.bundleId = "";
    this.source = null;
    this.timer = 0;
    this.stopped = false;
  }

  endpoint(bundleId, suffix = "") {
    return new URL(`/v1/bundles/${encodeURIComponent(bundleId)}${suffix}`, this.url);
  }

  async request() {
    this.stopWatching();
    this.link.setAttribute("aria-busy", "true");
    if (dialog?.isOpen) dialog.progress("", 0, 0, 0);
    let bundle;
    try {
      const response = await fetch(this.url, {
        method: "POST",
        credentials: "omit",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      const body = await response.json().catch(() => null);
      if (!response.ok) throw new Failure(errorMessage(body, response));
      if (!body || typeof body.bundleId !== "string") throw new Failure("The service sent an unexpected answer.");
      bundle = body;
    } catch (error) {
      if (!this.stopped) {
        this.fail(error instanceof Failure ? error.message : "The service could not be reached. Try again later.");
      }
      return;
    } finally {
      this.link.removeAttribute("aria-busy");
    }
    if (this.stopped) return;
    this.bundleId = bundle.bundleId;
    this.filename = bundle.filename || "";
    if (bundle.status === "BUNDLE_STATUS_SUCCESS") {
      this.download(bundle);
    } else if (bundle.status === "BUNDLE_STATUS_ERROR") {
      this.fail(bundle.error || "The file could not be prepared.");
    } else {
      this.open();
      theDialog().progress(bundle.stage, count(bundle.done), count(bundle.total), 0);
      this.watch();
    }
  }

  open() {
    const ui = theDialog();
    ui.onClose = () => this.stop();
    ui.onRetry = () => this.request();
    ui.describe(`Preparing your ${this.kind}`, this.filename);
    ui.show(this.link);
  }

  watch() {
    if (typeof EventSource !== "function") {
      this.poll();
      return;
    }
    const source = new EventSource(this.endpoint(this.bundleId, "/events"));
    this.source = source;
    source.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      if (this.source === source) this.onEvent(event);
    };
    source.onerror = (event) => {
      if (this.source !== source || this.stopped) return;
      if (typeof event.data === "string") {
        // `event: error`: the service says why it ended the stream (an error body, as JSON).
        let body = null;
        try {
          body = JSON.parse(event.data);
        } catch {
          // not JSON: fall through to the generic message
        }
        this.fail(body?.error?.message || "The progress of the file could not be followed.");
        return;
      }
      // CONNECTING: the browser reconnects by itself, resuming with Last-Event-ID. CLOSED: it gave up.
      if (source.readyState === EventSource.CLOSED) {
        this.source = null;
        this.poll();
      }
    };
  }

  onEvent(event) {
    if (!FINAL_STAGES.has(event.stage)) {
      theDialog().progress(event.stage, count(event.done), count(event.total), count(event.attempt));
      return;
    }
    this.stopWatching();
    const bundle = event.bundle;
    if (event.stage === "STAGE_SUCCEEDED") {
      this.download(bundle && bundle.bundleId ? bundle : { bundleId: this.bundleId, filename: this.filename });
    } else {
      this.fail(event.error?.message || bundle?.error || "The file could not be prepared.");
    }
  }

  poll() {
    const tick = async () => {
      if (this.stopped) return;
      try {
        const response = await fetch(this.endpoint(this.bundleId), {
          credentials: "omit",
          cache: "no-store",
          headers: { Accept: "application/json" },
        });
        const body = await response.json().catch(() => null);
        if (this.stopped) return;
        if (response.ok && body) {
          if (body.status === "BUNDLE_STATUS_SUCCESS") return this.download(body);
          if (body.status === "BUNDLE_STATUS_ERROR") return this.fail(body.error || "The file could not be prepared.");
          theDialog().progress(body.stage, count(body.done), count(body.total), 0);
        } else if (response.status >= 400 && response.status < 500) {
          return this.fail(errorMessage(body, response));
        }
      } catch {
        // A network blip: try again at the next tick.
      }
      if (!this.stopped) this.timer = setTimeout(tick, POLL_MS);
    };
    this.timer = setTimeout(tick, POLL_MS);
  }

  download(bundle) {
    this.stopWatching();
    const anchor = element("a", { href: this.endpoint(bundle.bundleId, "/file").href, hidden: "" });
    if (bundle.filename) anchor.download = bundle.filename; // honoured on the same origin; otherwise the header's
    document.body.append(anchor);
    anchor.click();
    anchor.remove();
    announce(`Your ${this.kind} download has started.`);
    this.stop();
    if (dialog?.isOpen) dialog.hide();
  }

  fail(message) {
    this.stopWatching();
    this.open();
    theDialog().describe(`Your ${this.kind} could not be prepared`, this.filename);
    theDialog().failure(message);
  }

  stopWatching() {
    this.source?.close();
    this.source = null;
    clearTimeout(this.timer);
    this.timer = 0;
  }

  stop() {
    this.stopped = true;
    this.stopWatching();
    if (current === this) current = null;
  }
}

function onClick(event) {
  if (event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return; // a new tab: the no-JS page
  const link = event.target instanceof Element ? event.target.closest(LINKS) : null;
  if (!link || !link.href) return;
  event.preventDefault();
  if (current && current.link === link && !current.stopped && link.getAttribute("aria-busy") === "true") return;
  current?.stop();
  current = new Download(link);
  current.request();
}

if (!document.documentElement.hasAttribute("data-derivatives-downloader")) {
  document.documentElement.setAttribute("data-derivatives-downloader", "ready"); // once, if loaded twice
  installStyles();
  document.addEventListener("click", onClick);
}

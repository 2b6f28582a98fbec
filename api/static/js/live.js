// Live updates: one EventSource per page on the API's server-sent event streams, and
// refreshes coalesced so that a burst of events costs one fetch, not one per event.

const indicator = () => document.getElementById("live");

function show(text, on) {
  const badge = indicator();
  badge.textContent = text;
  badge.classList.toggle("on", on);
}

// Follows ``url`` (an events stream with follow=true) until ``close()``; ``onEvent`` gets each
// event's data. The browser resumes a dropped stream itself with Last-Event-ID; an ``end``
// message (the release ended) closes it, and ``onEnd`` is called.
export function follow(url, onEvent, onEnd = () => {}) {
  const source = new EventSource(url, { withCredentials: true });
  show("connecting", false);
  source.onopen = () => show("live", true);
  source.onmessage = (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    onEvent(event);
  };
  source.addEventListener("end", () => {
    source.close();
    show("ended", false);
    onEnd();
  });
  source.onerror = () => {
    show(source.readyState === EventSource.CLOSED ? "offline" : "reconnecting", false);
  };
  return {
    close() {
      source.close();
      show("offline", false);
    },
    get closed() {
      return source.readyState === EventSource.CLOSED;
    },
  };
}

// ``run`` at most once per ``gap`` ms, however often it is asked for; a request made while
// it runs makes it run once more afterwards.
export function coalesced(run, gap = 400) {
  let busy = false;
  let again = false;
  let last = 0;
  let stopped = false;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  async function request() {
    if (stopped) return;
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      const wait = last + gap - Date.now();
      if (wait > 0) await sleep(wait);
      if (!stopped) await run();
    } catch (error) {
      console.warn("refresh failed", error);
    } finally {
      last = Date.now();
      busy = false;
      if (again) {
        again = false;
        request();
      }
    }
  }
  request.stop = () => {
    stopped = true;
  };
  return request;
}

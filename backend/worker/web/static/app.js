// The worker page's live updates: server-sent events in, small DOM updates out. No framework, no build step.
"use strict";

(() => {
  const body = document.body;
  const FINISHED = ["succeeded", "failed", "canceled"];

  // The same words as views.py's duration and progress_text filters, for values that arrive live.
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 10) return `${seconds.toFixed(1)} s`;
    const whole = Math.round(seconds);
    if (whole < 60) return `${whole} s`;
    if (whole < 3600) return `${Math.floor(whole / 60)} min ${String(whole % 60).padStart(2, "0")} s`;
    return `${Math.floor(whole / 3600)} h ${String(Math.floor((whole % 3600) / 60)).padStart(2, "0")} min`;
  }

  function progressText(status) {
    const d = status.detail;
    if (status.status === "queued") {
      return status.queue_position === null || status.queue_position === undefined
        ? "queued" : `queued (#${status.queue_position + 1})`;
    }
    const parts = [];
    if (d.window && d.num_windows) parts.push(`window ${d.window}/${d.num_windows}`);
    if (d.step !== null && d.step !== undefined && d.num_steps) parts.push(`step ${d.step}/${d.num_steps}`);
    return parts.join(" · ") || d.phase || status.status;
  }

  function setText(root, selector, text) {
    for (const element of root.querySelectorAll(selector)) element.textContent = text;
  }

  function applyStatus(root, status) {
    for (const bar of root.querySelectorAll(".js-progress")) bar.value = status.progress;
    setText(root, ".js-percent", `${Math.round(status.progress * 100)} %`);
    setText(root, ".js-progress-text", progressText(status));
    setText(root, ".js-phase", status.detail.phase || "—");
    setText(root, ".js-eta", duration(status.detail.eta_seconds));
  }

  function localTimes(root) {
    for (const element of root.querySelectorAll("time[datetime]")) {
      const when = new Date(element.dateTime);
      if (!Number.isNaN(when.getTime())) {
        element.title = element.textContent;
        element.textContent = when.toLocaleString();
      }
    }
  }

  function showDisconnected() {
    document.getElementById("connection").hidden = false;
  }

  // A fragment of server-rendered HTML; a 401 means the session ended, and reloading leads to the login form.
  async function fragment(url) {
    const response = await fetch(url, { headers: { Accept: "text/html" }, cache: "no-store" });
    if (response.status === 401) {
      window.location.reload();
      return null;
    }
    if (!response.ok) throw new Error(`${url}: ${response.status}`);
    const template = document.createElement("template");
    template.innerHTML = await response.text();
    localTimes(template.content);
    return template.content;
  }

  function replace(id, content) {
    const fresh = content && content.getElementById ? content.getElementById(id) : null;
    const current = document.getElementById(id);
    if (fresh && current) current.replaceWith(fresh);
  }

  function stream(url, handlers) {
    const source = new EventSource(url);
    for (const [name, handle] of Object.entries(handlers)) {
      source.addEventListener(name, (event) => handle(JSON.parse(event.data), source));
    }
    source.addEventListener("expired", () => {
      source.close();
      window.location.reload();
    });
    source.onerror = () => {
      // EventSource retries by itself after a dropped connection; CLOSED means it gave up (e.g. a 401).
      if (source.readyState === EventSource.CLOSED) showDisconnected();
    };
    return source;
  }

  // Cancel and delete ask first.
  document.addEventListener("submit", (event) => {
    const message = event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });

  localTimes(document);

  if (body.dataset.page === "dashboard") {
    let revision = document.getElementById("jobs").dataset.revision;
    let loading = false;
    let again = false;
    const refreshJobs = async () => {
      if (loading) {
        again = true;
        return;
      }
      loading = true;
      try {
        const content = await fragment(body.dataset.fragment);
        replace("jobs", content);
        revision = document.getElementById("jobs").dataset.revision;
      } catch (error) {
        showDisconnected();
      } finally {
        loading = false;
        if (again) {
          again = false;
          refreshJobs();
        }
      }
    };
    stream(body.dataset.events, {
      jobs: (data) => {
        if (data.revision !== revision) {
          refreshJobs();
          return;
        }
        for (const status of data.jobs) {
          const row = document.querySelector(`tr[data-job="${status.id}"]`);
          if (row) applyStatus(row, status);
        }
      },
    });
    // GPU memory and the queue counts change without any job event.
    window.setInterval(async () => {
      try {
        replace("health-body", await fragment("/ui/fragments/health"));
      } catch (error) {
        showDisconnected();
      }
    }, 10000);
  }

  if (body.dataset.page === "job" && body.dataset.finished === "false") {
    const jobId = body.dataset.job;
    const live = document.getElementById("live");
    let windows = Number(body.dataset.windows);
    stream(`/ui/jobs/${jobId}/events`, {
      status: async (status, source) => {
        if (FINISHED.includes(status.status)) {
          source.close();
          window.location.reload();  // the finished page shows the result, the error or the timings
          return;
        }
        applyStatus(live, status);
        setText(document, ".js-status", status.status + (status.cancel_requested ? " (canceling)" : ""));
        setText(live, ".js-windows", status.detail.num_windows
          ? `${status.windows_done} of ${status.detail.num_windows}` : `${status.windows_done}`);
        if (status.windows_done !== windows) {
          windows = status.windows_done;
          try {
            replace("result", await fragment(`/ui/jobs/${jobId}/fragments/results`));
          } catch (error) {
            showDisconnected();
          }
        }
      },
      deleted: (_, source) => {
        source.close();
        window.location.assign("/ui/");
      },
    });
  }
})();

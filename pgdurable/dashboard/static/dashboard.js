// pgdurable dashboard: the only script. Pages with data-refresh reload
// their <main> in place while the tab is visible and nobody is typing or
// reading an opened detail; forms with data-confirm ask first.
(function () {
  const main = document.querySelector("main[data-refresh]");
  if (main) {
    const every = Number(main.dataset.refresh) * 1000;
    const busy = () => document.activeElement && document.activeElement.closest("form") ||
      main.querySelector("details[open]:not(.failure details)");
    setInterval(async () => {
      if (document.visibilityState !== "visible" || busy()) return;
      try {
        const response = await fetch(location.href, {headers: {"X-Refresh": "1"}});
        if (!response.ok) return;
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = page.querySelector("main");
        if (fresh) main.innerHTML = fresh.innerHTML;
      } catch (error) { /* the next tick tries again */ }
    }, every);
  }
  document.addEventListener("submit", (event) => {
    const question = event.target.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });
})();

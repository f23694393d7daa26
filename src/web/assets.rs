//! The dashboard's stylesheet and live-refresh script, compiled into the binary: no CDN, no
//! file next to the executable.

use axum::http::header;
use axum::response::IntoResponse;

const CSS: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2430; background: #f6f7f9; }
header { background: #1d2430; color: #fff; padding: .6em 1.2em; display: flex; gap: 1.5em; align-items: center; }
header a { color: #cfe0ff; text-decoration: none; }
header .brand { font-weight: 700; color: #fff; }
header .auth { margin-left: auto; display: flex; gap: .6em; align-items: center; }
main { padding: 1em 1.2em; max-width: 1200px; }
section { background: #fff; border: 1px solid #dde1e7; border-radius: 6px; padding: .8em 1em; margin-bottom: 1em; }
h1 { font-size: 1.4em; margin: .2em 0 .6em; } h2 { font-size: 1.1em; margin: 0 0 .6em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3em .6em; border-bottom: 1px solid #eceff3; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f3f5f8; padding: .6em; overflow: auto; white-space: pre-wrap; word-break: break-all; margin: 0; }
pre.inline { display: inline; padding: 0 .3em; }
.status { font-weight: 600; font-size: .85em; padding: .1em .4em; border-radius: 3px; background: #e8ebf0; }
.s-COMPLETED { background: #d7f5dd; } .s-FAILED { background: #fbd9d9; } .s-RETRYING { background: #fdebc8; }
.s-RUNNING { background: #d6e6ff; } .s-CANCELLED { background: #e4e4e4; }
.paused { color: #a15c00; font-weight: 600; }
form.inline { display: inline; margin: 0; }
button { font: inherit; padding: .15em .6em; cursor: pointer; }
.error { color: #9b1c1c; }
.muted { color: #6b7480; }
.chart rect.c { fill: #3c9a55; } .chart rect.f { fill: #d04545; }
.chart text { font-size: 10px; fill: #6b7480; }
.filters { display: flex; gap: .8em; flex-wrap: wrap; align-items: end; }
.filters label { display: flex; flex-direction: column; font-size: .85em; }
"#;

/// Reloads the page every 5 s while the "live" box is ticked (remembered per browser).
const LIVE_JS: &str = r#"(function () {
  var box = document.getElementById('live');
  if (!box) return;
  box.checked = localStorage.getItem('fq-live') === '1';
  var timer = null;
  function arm() {
    if (timer) { clearTimeout(timer); timer = null; }
    if (box.checked) timer = setTimeout(function () { location.reload(); }, 5000);
  }
  box.addEventListener('change', function () {
    localStorage.setItem('fq-live', box.checked ? '1' : '0');
    arm();
  });
  arm();
})();
"#;

pub(super) async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS)
}

pub(super) async fn live_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        LIVE_JS,
    )
}

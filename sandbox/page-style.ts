/**
 * The reference sandbox's style: light and dark from the person's setting, and the role's colour
 * (green for live, amber for dev) on the band at the top, so the two are never mistaken. Every
 * pair of text and background colours here meets WCAG AA contrast (4.5:1) in both schemes.
 */
export const PAGE_STYLE = `
:root {
  color-scheme: light dark;
  --bg: #f6f7f9; --surface: #ffffff; --text: #1b1d22; --muted: #4f5561; --border: #cfd3da;
  --link: #0b57d0; --button: #0b57d0; --button-text: #ffffff; --focus: #0b57d0;
  --band-bg: #e9ebef; --band-text: #1b1d22; --band-edge: #8a909c;
  --error: #a4161a;
}
html[data-role="live"] { --band-bg: #d6f2df; --band-text: #0b4a24; --band-edge: #1e8a46; }
html[data-role="dev"] { --band-bg: #fde6c4; --band-text: #5c3200; --band-edge: #c46f00; }
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #131418; --surface: #1d1f25; --text: #e9eaee; --muted: #aeb3bd; --border: #3b3e48;
    --link: #9ec1ff; --button: #9ec1ff; --button-text: #0c1a33; --focus: #9ec1ff;
    --band-bg: #2a2d35; --band-text: #e9eaee; --band-edge: #6d7380;
    --error: #ffaaa5;
  }
  html[data-role="live"] { --band-bg: #123d24; --band-text: #c2f2d2; --band-edge: #3ccf72; }
  html[data-role="dev"] { --band-bg: #47300a; --band-text: #ffdca3; --band-edge: #f0a030; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text); font: 1rem/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; }
header { display: flex; flex-wrap: wrap; align-items: center; justify-content: space-between; gap: 0.5rem 1rem;
  padding: 0.6rem 1rem; background: var(--band-bg); color: var(--band-text); border-bottom: 4px solid var(--band-edge); }
.band { min-width: 0; }
.band strong { display: inline-block; margin-right: 0.4rem; padding: 0.05rem 0.55rem; border: 2px solid var(--band-edge);
  border-radius: 999px; text-transform: uppercase; letter-spacing: 0.06em; font-size: 0.85rem; }
header nav { display: flex; gap: 1rem; }
header a { color: var(--band-text); font-weight: 600; }
main { max-width: 46rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.6rem; margin: 0.5rem 0 1rem; }
h2 { font-size: 1.15rem; margin: 0 0 0.6rem; }
h3 { font-size: 1rem; margin: 1rem 0 0.4rem; }
section { background: var(--surface); border: 1px solid var(--border); border-radius: 10px; padding: 1rem; margin: 0 0 1rem; }
a { color: var(--link); }
p { margin: 0.4rem 0; }
.hint { color: var(--muted); font-size: 0.95rem; }
dl { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 0.25rem 1rem; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; overflow-wrap: anywhere; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; }
.figures { display: flex; flex-wrap: wrap; gap: 0.5rem 2rem; margin: 0.6rem 0; }
.figure-label { color: var(--muted); margin-right: 0.4rem; }
.figures output { font-size: 1.5rem; font-weight: 700; font-variant-numeric: tabular-nums; }
label { display: block; font-weight: 600; margin-bottom: 0.25rem; }
.row { display: flex; flex-wrap: wrap; gap: 0.5rem; align-items: flex-end; }
.row > input { flex: 1 1 12rem; min-width: 0; }
.field { display: flex; flex-direction: column; }
.field.grow { flex: 1 1 12rem; min-width: 0; }
.field label { margin: 0; }
.field.grow input { width: 100%; }
input, select { font: inherit; color: var(--text); background: var(--bg); border: 1px solid var(--muted); border-radius: 6px; padding: 0.45rem 0.6rem; min-height: 2.5rem; }
button { font: inherit; font-weight: 600; color: var(--button-text); background: var(--button); border: 1px solid var(--button);
  border-radius: 6px; padding: 0.45rem 1rem; min-height: 2.5rem; cursor: pointer; }
button:disabled { opacity: 0.6; cursor: progress; }
:focus-visible { outline: 3px solid var(--focus); outline-offset: 2px; }
header :focus-visible { outline-color: var(--band-text); }
ol { margin: 0; padding-left: 1.5rem; }
li { overflow-wrap: anywhere; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; max-height: 16rem; overflow: auto; margin: 0.4rem 0 0;
  padding: 0.6rem; background: var(--bg); border: 1px solid var(--border); border-radius: 6px; font-size: 0.9rem; }
.error { color: var(--error); }
`;

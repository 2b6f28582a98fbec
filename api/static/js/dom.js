// Small DOM helpers. Every text from the API goes in as a text node, never as HTML: node
// names and error messages come from agents and rows other programs wrote.

export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") element.className = value;
    else if (key === "style") element.style.cssText = value; // CSSOM, which the CSP allows
    else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(key, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else if (child instanceof Node) element.appendChild(child);
    else element.appendChild(document.createTextNode(String(child)));
  }
}

export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

export const status = (value) => h("span", { class: `status ${value}`, dataset: { status: value } }, value);

// "12s", "4m 10s", "3h 2m", "5d 1h".
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

export function when(iso) {
  return iso ? iso.slice(0, 19).replace("T", " ") + "Z" : "-";
}

export function actor(by) {
  return by ? `${by.tokenName} (${by.role})` : "-";
}

// The page ``filter.page`` (from 0, clamped to the last) of ``items``, ``size`` a page.
export function pageOf(items, filter, size) {
  const pages = Math.max(1, Math.ceil(items.length / size));
  filter.page = Math.min(filter.page, pages - 1);
  const start = filter.page * size;
  return { page: items.slice(start, start + size), start, pages };
}

// What a page reads from its own URL, and the WebSocket URL it derives from it.
// Pure functions of a Location-like object, so Node tests can call them.

/** `en` or `zh`: `?lang=` wins, else the browser's language. */
export function pickLang(param, navigatorLanguages = []) {
  const wanted = (param || "").toLowerCase();
  if (wanted === "zh" || wanted === "en") return wanted;
  for (const tag of navigatorLanguages) {
    if (typeof tag !== "string" || tag === "") continue;
    return tag.toLowerCase().startsWith("zh") ? "zh" : "en";
  }
  return "en";
}

/**
 * The page's settings. The room is the last path segment (`/overlay/<room>`,
 * `/host/<room>`); anything in front of `/overlay` or `/host` is a proxy prefix.
 */
export function pageParams(loc, navigatorLanguages = []) {
  const query = new URLSearchParams(loc.search || "");
  const match = /^(.*)\/(overlay|host)\/([^/]+)\/?$/.exec(loc.pathname || "");
  const skus = (query.get("sku") || "").split(",").map((s) => s.trim()).filter(Boolean);
  // A Set keeps the order given: `?sku=b,a` shows b first.
  return {
    prefix: match ? match[1] : "",
    page: match ? match[2] : null,
    room: match ? safeDecode(match[3]) : "",
    lang: pickLang(query.get("lang"), navigatorLanguages),
    token: query.get("token") || "",
    // Where to fetch a fresh token before this one expires (clients/web/src/token.js).
    tokenUrl: query.get("token_url") || "",
    transparent: (query.get("bg") || "").toLowerCase() === "transparent",
    skus: skus.length ? new Set(skus) : null,
  };
}

function safeDecode(s) {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** `ws(s)://<same host><prefix>/ws/<room>[?role=host][&token=…]` */
export function wsUrl(loc, params, role = "viewer") {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  const query = new URLSearchParams();
  if (role !== "viewer") query.set("role", role);
  if (params.token) query.set("token", params.token);
  const qs = query.toString();
  return `${scheme}//${loc.host}${params.prefix}/ws/${encodeURIComponent(params.room)}${qs ? `?${qs}` : ""}`;
}

const collator = new Intl.Collator("en", { numeric: true });

/**
 * The order SKUs appear in: the `?sku=` order when given, else by SKU, so a
 * screen looks the same after every reload and on every gateway node.
 */
export function displayOrder(skus, filter = null) {
  if (filter) {
    const present = new Set(skus);
    return [...filter].filter((sku) => present.has(sku));
  }
  return [...skus].sort(collator.compare);
}

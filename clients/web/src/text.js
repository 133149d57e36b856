// Words and numbers on the screens, in English and Chinese.

export const DASH = "—";

const numberFormats = {
  en: new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 }),
  zh: new Intl.NumberFormat("zh-CN", { maximumFractionDigits: 0 }),
};

export function formatInt(n, lang = "en") {
  return Number.isFinite(n) ? (numberFormats[lang] || numberFormats.en).format(n) : DASH;
}

/** 45 → "0:45", 754 → "12:34", 3725 → "1:02:05". */
export function formatClock(seconds) {
  if (!Number.isFinite(seconds)) return DASH;
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/** Units per minute: one decimal below 10, whole (grouped) numbers above. */
export function formatVelocity(v, lang = "en") {
  if (!Number.isFinite(v)) return DASH;
  if (v === 0) return "0";
  return v < 10 ? (Math.round(v * 10) / 10).toFixed(1) : formatInt(Math.round(v), lang);
}

/** qty / initial as a whole percentage; "<1%" for the last crumbs, "—" without a plan. */
export function formatPercent(qty, initial) {
  if (!Number.isFinite(initial) || initial <= 0 || !Number.isFinite(qty)) return DASH;
  const pct = (qty / initial) * 100;
  if (qty > 0 && pct < 1) return "<1%";
  return `${Math.round(pct)}%`;
}

/** Elapsed milliseconds, as "0.4", "12" or "3:05" plus a unit key. */
export function formatAgo(ms) {
  if (!Number.isFinite(ms)) return null;
  const s = Math.max(0, ms) / 1000;
  if (s < 10) return { value: s.toFixed(1), unit: "s" };
  if (s < 120) return { value: String(Math.floor(s)), unit: "s" };
  if (s < 3600) return { value: String(Math.floor(s / 60)), unit: "min" };
  return { value: String(Math.floor(s / 3600)), unit: "h" };
}

/**
 * The first batch still to come: the gateway's `next_batch` when it is still
 * ahead, else the first upcoming entry of the item's own `batches`.
 */
export function nextBatch(item, skuStats, nowMs) {
  const fromStats = skuStats && skuStats.next_batch;
  if (fromStats && Number.isFinite(fromStats.at) && fromStats.at > nowMs) return fromStats;
  let best = null;
  for (const b of Array.isArray(item && item.batches) ? item.batches : []) {
    if (b && Number.isFinite(b.at) && b.at > nowMs && (best === null || b.at < best.at)) best = b;
  }
  return best;
}

const PLATFORMS = {
  en: { douyin: "Douyin", kuaishou: "Kuaishou", taobao: "Taobao", jd: "JD", pdd: "Pinduoduo", xiaohongshu: "RED" },
  zh: { douyin: "抖音", kuaishou: "快手", taobao: "淘宝", jd: "京东", pdd: "拼多多", xiaohongshu: "小红书" },
};

export function platformName(key, lang = "en") {
  return (PLATFORMS[lang] || PLATFORMS.en)[key] || key;
}

/** Every sentence the pages show. `{n}` is a number the page sets separately. */
export const STRINGS = {
  en: {
    // overlay
    left: "{n} left",
    onlyLeft: "Only {n} left!",
    soldOut: "Sold out",
    backInStock: "Back in stock!",
    restocked: "+{n} restocked",
    // host
    alert: { ok: "IN STOCK", low: "LOW STOCK", critical: "LAST CALL", out: "SOLD OUT" },
    velocity: "Selling",
    perMinute: "/min",
    eta: "Sells out in",
    nextBatch: "Next batch",
    reserve: "Reserve",
    batchNow: "now",
    of: "of",
    watching: "watching",
    updated: "updated {ago} ago",
    units: { s: "s", min: "min", h: "h" },
    connecting: "connecting…",
    offline: "OFFLINE",
    retryIn: "retrying in {s} s",
    retrying: "retrying…",
    lastUpdate: "last update {ago} ago",
    noData: "no data yet",
    needsToken: "This screen needs a host token. Open the host link that stockwire demo prints, "
      + "or add ?token=… from stockwire token.",
    fatal: "Disconnected: {reason}. Reload with a new link.",
    waiting: "Waiting for products in room {room}…",
    cue: {
      critical: "Last call! {name}: only {qty} left",
      batch: "Next batch of {name} in {t}: {qty} more",
      release: "{name} is sold out: {reserve} in reserve to release",
      low: "{name} is running low: {qty} left ({pct})",
      fastest: "{name} is selling fastest: {vel}/min",
      out: "{name} is sold out",
      calm: "All products in stock",
    },
  },
  zh: {
    left: "剩余 {n} 件",
    onlyLeft: "仅剩 {n} 件！",
    soldOut: "已售罄",
    backInStock: "补货上架！",
    restocked: "补货 +{n}",
    alert: { ok: "库存充足", low: "库存紧张", critical: "即将售罄", out: "已售罄" },
    velocity: "销售速度",
    perMinute: "件/分",
    eta: "预计售罄",
    nextBatch: "下一批",
    reserve: "可释放备货",
    batchNow: "开抢",
    of: "/",
    watching: "人在看",
    updated: "{ago}前更新",
    units: { s: "秒", min: "分钟", h: "小时" },
    connecting: "连接中…",
    offline: "连接中断",
    retryIn: "{s} 秒后重连",
    retrying: "正在重连…",
    lastUpdate: "最后更新于 {ago}前",
    noData: "暂无数据",
    needsToken: "主播屏需要主播令牌：请打开 stockwire demo 打印的主播链接，或在地址后加上 stockwire token 生成的 ?token=…",
    fatal: "连接已断开：{reason}。请用新链接重新打开。",
    waiting: "等待直播间 {room} 上架商品…",
    cue: {
      critical: "最后机会！{name} 仅剩 {qty} 件",
      batch: "{name} 下一批 {t} 后开抢，{qty} 件",
      release: "{name} 已售罄，可释放备货 {reserve} 件",
      low: "{name} 库存紧张：剩 {qty} 件（{pct}）",
      fastest: "{name} 卖得最快：每分钟 {vel} 件",
      out: "{name} 已售罄",
      calm: "全部商品库存充足",
    },
  },
};

/** Replace `{key}` placeholders. */
export function fill(template, values) {
  return template.replace(/\{(\w+)\}/g, (m, key) => (key in values ? String(values[key]) : m));
}

/** "0.4 s" / "0.4 秒" */
export function agoText(ms, lang) {
  const ago = formatAgo(ms);
  if (ago === null) return DASH;
  return `${ago.value} ${STRINGS[lang].units[ago.unit]}`;
}

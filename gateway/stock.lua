-- stockwire: change one SKU's stock and publish its new state, atomically.
--
-- KEYS[1]  stockwire:{<room>}:stock    (hash: SKU -> msgpack record)
-- KEYS[2]  stockwire:{<room>}:updates  (sharded pub/sub channel: SPUBLISH, Redis >= 7.0)
-- KEYS[3]  stockwire:{<room>}:epoch    (string: set once, when the room is first written)
-- ARGV[1]  op: "set" | "adjust" | "release"
-- ARGV[2]  SKU
-- ARGV[3]  amount, a decimal integer (set: absolute quantity; adjust: delta; release: units from reserve)
-- ARGV[4]  msgpack map of optional fields (name, initial, platforms, reserve, safety, batches), or ""
-- ARGV[5]  explicit version as a decimal integer, or "" for stored version + 1
-- ARGV[6]  platform for adjust, or ""
--
-- Returns {status, qty, ver, detail}; status is ok | insufficient | unknown | stale | invalid.
-- Anything but ok changes nothing and publishes nothing.  Whatever it accepts,
-- the gateway's decoder accepts too: a record screens would drop is refused here,
-- so a SKU can never vanish from screens while orders on it keep succeeding.
-- Mirrors gateway/stock.py:apply_op; the broker contract tests hold the two together.

local MAX_INT = 9007199254740991
local op, sku = ARGV[1], ARGV[2]
local raw = redis.call('HGET', KEYS[1], sku)
local rec = nil
if raw then rec = cmsgpack.unpack(raw) end
local qty, ver = 0, 0
if rec then qty, ver = rec.qty, rec.ver end

local function refuse(status, detail)
  return {status, qty, ver, detail or ''}
end
local function chars(s)
  local _, n = string.gsub(s, '[^\128-\191]', '')
  return n
end
local function is_count(v)
  return type(v) == 'number' and v >= 0 and v <= MAX_INT and v == math.floor(v)
end
-- Strict UTF-8, as the gateway decodes it: no overlong forms, no surrogates,
-- nothing above U+10FFFF.  Redis's Lua has no utf8 library.
local function utf8_ok(s)
  if not string.find(s, '[\128-\255]') then return true end
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    local len, lo, hi = 1, 0x80, 0xBF
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then
      len = 3
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      len = 4
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    else
      return false
    end
    if len > 1 then
      if i + len - 1 > n then return false end
      local c2 = string.byte(s, i + 1)
      if c2 < lo or c2 > hi then return false end
      for j = i + 2, i + len - 1 do
        local cj = string.byte(s, j)
        if cj < 0x80 or cj > 0xBF then return false end
      end
    end
    i = i + len
  end
  return true
end
-- A decimal integer and nothing else: tonumber alone also takes "1e3", "0x10" and " 5".
local function integer(s)
  if not string.find(s, '^%-?%d+$') then return nil end
  return tonumber(s)
end

if not utf8_ok(sku) or chars(sku) < 1 or chars(sku) > 64 or string.find(sku, '[%z\1-\31{}]') then
  return refuse('invalid', 'sku must be UTF-8 matching [^\\x00-\\x1f{}]{1,64}')
end
local platform = ARGV[6]
if platform ~= '' and (#platform > 32 or not string.find(platform, '^[a-z0-9_-]+$')) then
  return refuse('invalid', 'platform must match [a-z0-9_-]{1,32}')
end
local amount = integer(ARGV[3])
if amount == nil or math.abs(amount) > MAX_INT then
  return refuse('invalid', 'amount must be an integer')
end

local extras = {}
if ARGV[4] ~= '' then
  local ok, decoded = pcall(cmsgpack.unpack, ARGV[4])
  if not ok or type(decoded) ~= 'table' then return refuse('invalid', 'fields must be a msgpack map') end
  extras = decoded
end
for k, v in pairs(extras) do
  if k == 'initial' or k == 'reserve' then
    if not is_count(v) then return refuse('invalid', k .. ' must be a non-negative integer') end
  elseif k == 'name' then
    if type(v) ~= 'string' or not utf8_ok(v) or chars(v) > 200 then
      return refuse('invalid', 'name must be UTF-8 text of at most 200 characters')
    end
  elseif k == 'safety' then
    if type(v) ~= 'number' or v ~= v or v < 0 or v >= 1 then return refuse('invalid', 'safety must be a number in [0, 1)') end
  elseif k == 'batches' then
    if type(v) ~= 'table' or #v > 32 then return refuse('invalid', 'batches must be a list of at most 32 entries') end
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    if n ~= #v then return refuse('invalid', 'batches must be a list of at most 32 entries') end
    for _, b in ipairs(v) do
      local keys = 0
      if type(b) == 'table' then for _ in pairs(b) do keys = keys + 1 end end
      if type(b) ~= 'table' or keys ~= 2 or not is_count(b.at) or not is_count(b.qty) then
        return refuse('invalid', 'each batch is a map with exactly at and qty, non-negative integers')
      end
    end
  elseif k == 'platforms' then
    if type(v) ~= 'table' then return refuse('invalid', 'platforms must be a map of at most 16 entries') end
    local n = 0
    for pname, pqty in pairs(v) do
      n = n + 1
      if type(pname) ~= 'string' or #pname > 32 or not string.find(pname, '^[a-z0-9_-]+$') then
        return refuse('invalid', 'platform names must match [a-z0-9_-]{1,32}')
      end
      if not is_count(pqty) then return refuse('invalid', 'platforms.' .. pname .. ' must be a non-negative integer') end
    end
    if n > 16 then return refuse('invalid', 'platforms must be a map of at most 16 entries') end
  else
    return refuse('invalid', 'unknown field ' .. tostring(k))
  end
end

if op == 'set' then
  if amount < 0 then return refuse('invalid', 'quantity must be >= 0') end
  if not rec then rec = {sku = sku} end
  rec.qty = amount
elseif op ~= 'adjust' and op ~= 'release' then
  return refuse('invalid', 'unknown op ' .. op)
elseif not rec then
  return refuse('unknown', 'SKU has never been set')
elseif op == 'adjust' then
  if qty + amount < 0 then return refuse('insufficient', 'only ' .. qty .. ' left') end
  if platform ~= '' then
    local platforms = rec.platforms or {}
    local have = platforms[platform] or 0
    if have + amount < 0 then
      return refuse('insufficient', 'only ' .. have .. ' left on ' .. platform)
    end
    platforms[platform] = have + amount
    rec.platforms = platforms
  end
  rec.qty = qty + amount
else
  local reserve = rec.reserve or 0
  if amount <= 0 then return refuse('invalid', 'release amount must be > 0') end
  if amount > reserve then return refuse('insufficient', 'only ' .. reserve .. ' in reserve') end
  rec.reserve = reserve - amount
  rec.qty = qty + amount
end

for k, v in pairs(extras) do rec[k] = v end

if ARGV[5] ~= '' then
  local v = integer(ARGV[5])
  if v == nil or v > MAX_INT then return refuse('invalid', 'version must be an integer') end
  if v <= ver then return refuse('stale', 'version ' .. ARGV[5] .. ' <= stored ' .. ver) end
  rec.ver = v
else
  rec.ver = ver + 1
end
if rec.qty > MAX_INT then return refuse('invalid', 'qty would exceed 2^53-1') end
if rec.ver > MAX_INT then return refuse('invalid', 'ver would exceed 2^53-1') end
if rec.platforms then
  for pname, pqty in pairs(rec.platforms) do
    if pqty > MAX_INT then return refuse('invalid', 'platforms.' .. pname .. ' would exceed 2^53-1') end
  end
end
local t = redis.call('TIME')
rec.ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Every record carries the epoch it was written in, so a gateway that stayed
-- connected through a FLUSHALL still notices that versions started over.
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('SET', KEYS[3], epoch)
elseif #epoch > 64 or not string.find(epoch, '^[\33-\126]+$') then
  return refuse('invalid', 'the epoch key must hold 1-64 printable ASCII characters')
end
rec.ep = epoch
local packed = cmsgpack.pack(rec)
redis.call('HSET', KEYS[1], sku, packed)
redis.call('SPUBLISH', KEYS[2], packed)
return {'ok', rec.qty, rec.ver, ''}

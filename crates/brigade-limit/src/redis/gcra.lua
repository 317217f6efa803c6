-- brigade-limit: GCRA over every limit of one key, all or nothing, on the server's clock.
--
-- KEYS[i]  limit i's theoretical arrival time (TAT), in nanoseconds since the Unix epoch, as
--          a decimal string. A missing key is idle: its TAT is in the past.
-- ARGV[1]  'a' to decide and charge, 's' to settle a reservation.
-- ARGV[2]  '' to read the server's clock (TIME), or a fixed time in nanoseconds (a test clock).
--
-- 'a', per limit i, from ARGV[3]: slack, charge (nanoseconds)
--     slack  = interval * (burst - cells), or '' if the call charges this limit nothing;
--     charge = interval * cells.
--     Admitted when TAT <= now + slack on every charged limit; each TAT then becomes
--     max(TAT, now) + charge. Otherwise nothing is written.
--     Returns {1 admitted or 0 rejected, now, TAT_1, ..., TAT_n}, times as decimal strings.
-- 's', per limit i, from ARGV[3]: op, amount, until
--     op '+': TAT = max(TAT, now) + amount (an extra charge, past the burst if need be);
--     op '-': TAT -= min(amount, until - now), never below min(now, TAT) (a refund of what the
--             reservation, whose charge left the TAT at `until`, still owes);
--     op '':  untouched.
--     Returns 1.
--
-- Lua numbers are doubles, exact only below 2^53, and nanoseconds since 1970 are near 2^61:
-- every time is kept as two exact parts, whole milliseconds and the nanoseconds within.
-- Every written key expires (PX) when its TAT passes; a key whose TAT is not after now is
-- deleted. So an idle key costs Redis nothing, and a missing key means the same as an idle one.

if redis.replicate_commands then
  redis.replicate_commands() -- Redis 3.2 to 4: allow TIME before writes (always on since 5)
end

local M = 1000000

local function parse(s)
  if not s then
    return 0, 0
  end
  local len = #s
  if len <= 6 then
    return 0, tonumber(s)
  end
  return tonumber(string.sub(s, 1, len - 6)), tonumber(string.sub(s, len - 5))
end

local function fmt(ms, ns)
  if ms == 0 then
    return string.format('%d', ns)
  end
  return string.format('%d%06d', ms, ns)
end

local function add(ams, ans, bms, bns)
  local ms, ns = ams + bms, ans + bns
  if ns >= M then
    return ms + 1, ns - M
  end
  return ms, ns
end

-- a - b, for a >= b.
local function sub(ams, ans, bms, bns)
  local ms, ns = ams - bms, ans - bns
  if ns < 0 then
    return ms - 1, ns + M
  end
  return ms, ns
end

local function less(ams, ans, bms, bns)
  return ams < bms or (ams == bms and ans < bns)
end

local now_ms, now_ns
if ARGV[2] == '' then
  local time = redis.call('TIME')
  local us = tonumber(time[2])
  now_ms = tonumber(time[1]) * 1000 + math.floor(us / 1000)
  now_ns = (us % 1000) * 1000
else
  now_ms, now_ns = parse(ARGV[2])
end

-- Writes a TAT with its expiry, or deletes the key if the TAT is not after now.
local function store(key, ms, ns)
  if less(now_ms, now_ns, ms, ns) then
    local dms, dns = sub(ms, ns, now_ms, now_ns)
    if dns > 0 then
      dms = dms + 1
    end
    redis.call('SET', key, fmt(ms, ns), 'PX', dms)
  else
    redis.call('DEL', key)
  end
end

local n = #KEYS
local found = redis.call('MGET', unpack(KEYS))
local tms, tns = {}, {}
for i = 1, n do
  tms[i], tns[i] = parse(found[i])
end

if ARGV[1] == 'a' then
  local admit = 1
  for i = 1, n do
    local slack = ARGV[1 + 2 * i]
    if slack ~= '' then
      local lms, lns = add(now_ms, now_ns, parse(slack))
      if less(lms, lns, tms[i], tns[i]) then
        admit = 0
      end
    end
  end
  local reply = { admit, fmt(now_ms, now_ns) }
  for i = 1, n do
    if admit == 1 and ARGV[1 + 2 * i] ~= '' then
      local bms, bns = tms[i], tns[i]
      if less(bms, bns, now_ms, now_ns) then
        bms, bns = now_ms, now_ns
      end
      tms[i], tns[i] = add(bms, bns, parse(ARGV[2 + 2 * i]))
      store(KEYS[i], tms[i], tns[i])
    end
    reply[2 + i] = fmt(tms[i], tns[i])
  end
  return reply
end

for i = 1, n do
  local op = ARGV[3 * i]
  if op ~= '' then
    local ms, ns = tms[i], tns[i]
    if op == '+' then
      if less(ms, ns, now_ms, now_ns) then
        ms, ns = now_ms, now_ns
      end
      ms, ns = add(ms, ns, parse(ARGV[3 * i + 1]))
    else
      local ums, uns = parse(ARGV[3 * i + 2])
      local oms, ons = 0, 0
      if less(now_ms, now_ns, ums, uns) then
        oms, ons = sub(ums, uns, now_ms, now_ns)
      end
      local rms, rns = parse(ARGV[3 * i + 1])
      if less(oms, ons, rms, rns) then
        rms, rns = oms, ons
      end
      local fms, fns = now_ms, now_ns
      if less(ms, ns, fms, fns) then
        fms, fns = ms, ns
      end
      if less(ms, ns, rms, rns) then
        ms, ns = 0, 0
      else
        ms, ns = sub(ms, ns, rms, rns)
      end
      if less(ms, ns, fms, fns) then
        ms, ns = fms, fns
      end
    end
    store(KEYS[i], ms, ns)
  end
end
return 1

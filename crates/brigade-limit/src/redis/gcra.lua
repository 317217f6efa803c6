-- brigade-limit: GCRA over every limit of a key, all or nothing, on the server's clock; one
-- call carries a batch of such operations, on the same or on different keys, done in order.
--
-- ARGV[1]  '' to read the server's clock (TIME), or a fixed time in nanoseconds (a test clock).
-- ARGV[2]  n, the number of limits: every operation names n keys.
-- ARGV[3]  the first operation, then the next right after its last argument, and so on.
-- KEYS     n keys per operation, in the operations' order: each limit's theoretical arrival
--          time (TAT), in nanoseconds since the Unix epoch, as a decimal string. A missing key
--          is idle: its TAT is in the past.
--
-- 'a', then per limit i: slack, charge (nanoseconds), to decide and charge:
--     slack  = interval * (burst - cells), or '' if the call charges this limit nothing;
--     charge = interval * cells.
--     Admitted when TAT <= now + slack on every charged limit; each TAT then becomes
--     max(TAT, now) + charge. Otherwise nothing is written.
--     Replies {1 admitted or 0 rejected, now, TAT_1, ..., TAT_n}, times as decimal strings.
-- 's', then per limit i: op, amount, until, to settle a reservation:
--     op '+': TAT = max(TAT, now) + amount (an extra charge, past the burst if need be);
--     op '-': TAT -= min(amount, until - now), never below min(now, TAT) (a refund of what the
--             reservation, whose charge left the TAT at `until`, still owes);
--     op '':  untouched.
--     Replies 1.
-- An operation one of whose keys holds something other than a time (a string of at most 19
-- decimal digits: a time before the year 2286) or is not a string at all replies -1 and writes
-- nothing; the others in the batch go on. No key the script reads can make a write fail, so a
-- batch never stops halfway. Every time the script computes saturates at the latest time a
-- key may hold, so what it writes it can read back, however large a charge.
--
-- Returns one reply per operation, in order. Every operation of a batch sees the writes of the
-- ones before it and the same now.
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

-- A stored TAT, read with GET under pcall: false for a missing key, an error table for a key
-- that is not a string. nil if it is not a time: anything but 1 to 19 digits (more would
-- overflow the reply's 64 bits, and the expiry of a SET).
local function stored(s)
  if not s then
    return 0, 0
  end
  if type(s) ~= 'string' or #s > 19 or not string.find(s, '^%d+$') then
    return nil
  end
  return parse(s)
end

local function fmt(ms, ns)
  if ms == 0 then
    return string.format('%d', ns)
  end
  return string.format('%d%06d', ms, ns)
end

-- The latest time a key may hold: 19 nines of nanoseconds (in the year 2286), the most that
-- `stored` reads back. Sums saturate there, as the in-process limiter's saturate at 2^64 - 1.
local MAX_MS, MAX_NS = 9999999999999, 999999

local function add(ams, ans, bms, bns)
  local ms, ns = ams + bms, ans + bns
  if ns >= M then
    ms, ns = ms + 1, ns - M
  end
  if ms > MAX_MS then
    return MAX_MS, MAX_NS
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
if ARGV[1] == '' then
  local time = redis.call('TIME')
  local us = tonumber(time[2])
  now_ms = tonumber(time[1]) * 1000 + math.floor(us / 1000)
  now_ns = (us % 1000) * 1000
else
  now_ms, now_ns = parse(ARGV[1])
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

local n = tonumber(ARGV[2])
local replies = {}
local a, k = 3, 0 -- the operation's first argument, the keys before its own
while a <= #ARGV do
  local kind = ARGV[a]
  local tms, tns = {}, {}
  local bad = false
  for i = 1, n do
    tms[i], tns[i] = stored(redis.pcall('GET', KEYS[k + i]))
    if not tms[i] then
      bad = true
    end
  end
  local reply
  if bad then
    reply = -1
  elseif kind == 'a' then
    local admit = 1
    for i = 1, n do
      local slack = ARGV[a + 2 * i - 1]
      if slack ~= '' then
        local lms, lns = add(now_ms, now_ns, parse(slack))
        if less(lms, lns, tms[i], tns[i]) then
          admit = 0
        end
      end
    end
    reply = { admit, fmt(now_ms, now_ns) }
    for i = 1, n do
      if admit == 1 and ARGV[a + 2 * i - 1] ~= '' then
        local bms, bns = tms[i], tns[i]
        if less(bms, bns, now_ms, now_ns) then
          bms, bns = now_ms, now_ns
        end
        tms[i], tns[i] = add(bms, bns, parse(ARGV[a + 2 * i]))
        store(KEYS[k + i], tms[i], tns[i])
      end
      reply[2 + i] = fmt(tms[i], tns[i])
    end
  else
    for i = 1, n do
      local op = ARGV[a + 3 * i - 2]
      if op ~= '' then
        local ms, ns = tms[i], tns[i]
        if op == '+' then
          if less(ms, ns, now_ms, now_ns) then
            ms, ns = now_ms, now_ns
          end
          ms, ns = add(ms, ns, parse(ARGV[a + 3 * i - 1]))
        else
          local ums, uns = parse(ARGV[a + 3 * i])
          local oms, ons = 0, 0
          if less(now_ms, now_ns, ums, uns) then
            oms, ons = sub(ums, uns, now_ms, now_ns)
          end
          local rms, rns = parse(ARGV[a + 3 * i - 1])
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
        store(KEYS[k + i], ms, ns)
      end
    end
    reply = 1
  end
  replies[#replies + 1] = reply
  if kind == 'a' then
    a = a + 1 + 2 * n
  else
    a = a + 1 + 3 * n
  end
  k = k + n
end
return replies

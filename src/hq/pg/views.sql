-- Schema migration 2: typed, documented views over `records` for BI tools (Grafana, Metabase,
-- psql). docs/postgres.md describes them for their readers; every view and column also
-- carries a COMMENT, so a BI tool's data browser shows the same text.
--
-- Runs once, in the migration's transaction, like every migration: never edit it once
-- shipped; change a view with a later migration (CREATE OR REPLACE VIEW, or DROP and CREATE).
-- Plain SQL for PostgreSQL 13 or later, no extension.
--
-- How the views read a record: `records.line` is the record exactly as the gateway sent it
-- (docs/records.md). Each view parses the line once per row, in
-- `CROSS JOIN LATERAL unnest(ARRAY[posgw_record(r.line) -> 'data']) AS p(d)`: a function in
-- FROM is evaluated once per row, where a subquery would be merged into the query and the
-- line parsed again for every column that reads it (and one kept apart with OFFSET 0 runs
-- only in the leader, never in parallel workers). Fields of `data` go through the small
-- functions below, which give NULL, never an error, for a field that is missing, null or of
-- the wrong type; counts over arrays use jsonpath, which needs no subquery. The envelope's
-- columns come from the table itself (the gateway from the id, store/gateway/epoch/seq,
-- which HQ checks), so filters on hq_seq, store, ts or received_at reach the table (its
-- indexes, its monthly partitions by received_at) before any line is parsed.
--
-- The functions are plain SQL, so PostgreSQL inlines them into the query (all but
-- posgw_texts), and PARALLEL SAFE, so big scans may use parallel workers. Their bodies call
-- only built-in functions (an inlined body is resolved with the reader's search_path), and
-- write every backslash in an E'' literal (the same meaning whatever
-- standard_conforming_strings says).

CREATE FUNCTION posgw_record_slow(line text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    -- Most lines that reach here are fine after all (text that only looks like an escape or
    -- a long exponent, inside a string): they are read as they are.
    RETURN line::jsonb;
EXCEPTION WHEN OTHERS THEN
    -- HQ stores such a line (it checks JSON as serde does), but jsonb cannot hold U+0000 or
    -- an unpaired surrogate, nor a number beyond numeric's range. A gateway writes a NUL when
    -- a register or scanner sent one; the rest only a hand-made client could send. So every
    -- escaped NUL or surrogate (`\u` after an even number of backslashes: an escape, not
    -- escaped text) becomes U+FFFD, and every such number (in a value's place) null.
    RETURN regexp_replace(
               regexp_replace(line,
                              E'(?<!\\\\)((?:\\\\\\\\)*)\\\\u(0000|[dD][89a-fA-F][0-9a-fA-F]{2})',
                              E'\\1\\\\ufffd', 'g'),
               E'([:,\\[]\\s*)-?[0-9]+(\\.[0-9]+)?([eE][-+]?[0-9]{5,}|[0-9]{250,})', E'\\1null', 'g')::jsonb;
END
$$;

CREATE FUNCTION posgw_record(line text) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        -- The common case: nothing jsonb might refuse, read at once (inlined). One regex over
        -- the line: an escaped NUL or UTF-16 surrogate, a number whose exponent has five
        -- digits or more, or a run of 250 digits (a regex repeats at most 255 times).
        WHEN line !~ E'\\\\u(0000|[dD][89a-fA-F])|[0-9][eE][-+]?[0-9]{5}|[0-9]{250}' THEN line::jsonb
        ELSE posgw_record_slow(line)
    END
$$;
COMMENT ON FUNCTION posgw_record(text) IS
    E'A record line as jsonb. What jsonb cannot hold reads as U+FFFD (an escaped NUL or UTF-16 surrogate, \\u0000 or \\ud83d) or null (a number with an exponent of five digits or more), so one odd record never makes a view fail.';

CREATE FUNCTION posgw_time(value text) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN value ~ E'^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?([Zz]|[-+](0[0-9]|1[0-5]):[0-5][0-9])$'
             AND left(value, 4) <> '0000'
        THEN CASE
            WHEN substr(value, 9, 2)::integer <= CASE substr(value, 6, 2)::integer
                    WHEN 2 THEN CASE
                        WHEN left(value, 4)::integer % 4 = 0
                             AND (left(value, 4)::integer % 100 <> 0
                                  OR left(value, 4)::integer % 400 = 0)
                        THEN 29 ELSE 28 END
                    WHEN 4 THEN 30 WHEN 6 THEN 30 WHEN 9 THEN 30 WHEN 11 THEN 30
                    ELSE 31 END
            THEN value::timestamptz
        END
    END
$$;
COMMENT ON FUNCTION posgw_time(text) IS
    'An RFC 3339 time with its offset (2026-11-27T16:01:02.345+08:00) as timestamptz; NULL for null, for anything else, and for a date that does not exist.';

CREATE FUNCTION posgw_date(value text) RETURNS date
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN value ~ '^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$'
             AND left(value, 4) <> '0000'
        THEN CASE
            WHEN substr(value, 9, 2)::integer <= CASE substr(value, 6, 2)::integer
                    WHEN 2 THEN CASE
                        WHEN left(value, 4)::integer % 4 = 0
                             AND (left(value, 4)::integer % 100 <> 0
                                  OR left(value, 4)::integer % 400 = 0)
                        THEN 29 ELSE 28 END
                    WHEN 4 THEN 30 WHEN 6 THEN 30 WHEN 9 THEN 30 WHEN 11 THEN 30
                    ELSE 31 END
            THEN value::date
        END
    END
$$;
COMMENT ON FUNCTION posgw_date(text) IS
    'A YYYY-MM-DD day as date; NULL for null, for anything else, and for a day that does not exist.';

CREATE FUNCTION posgw_number(value jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN jsonb_typeof(value) = 'number' THEN value::numeric END
$$;
COMMENT ON FUNCTION posgw_number(jsonb) IS 'A JSON number as numeric; NULL for anything else.';

CREATE FUNCTION posgw_bigint(value jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN jsonb_typeof(value) = 'number' THEN CASE
        WHEN round(value::numeric) BETWEEN -9223372036854775808 AND 9223372036854775807
        THEN round(value::numeric)::bigint
    END END
$$;
COMMENT ON FUNCTION posgw_bigint(jsonb) IS
    'A JSON number as bigint (rounded); NULL for anything else and for numbers out of range.';

CREATE FUNCTION posgw_boolean(value jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN jsonb_typeof(value) = 'boolean' THEN value::boolean END
$$;
COMMENT ON FUNCTION posgw_boolean(jsonb) IS 'A JSON true or false as boolean; NULL for anything else.';

CREATE FUNCTION posgw_array(value jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN jsonb_typeof(value) = 'array' THEN value ELSE '[]'::jsonb END
$$;
COMMENT ON FUNCTION posgw_array(jsonb) IS
    'A JSON array as it is; an empty array for anything else (so jsonb_array_elements never fails).';

CREATE FUNCTION posgw_texts(value jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN jsonb_typeof(value) = 'array'
        THEN ARRAY(SELECT jsonb_array_elements_text(value))
    END
$$;
COMMENT ON FUNCTION posgw_texts(jsonb) IS 'A JSON array of strings as text[]; NULL for anything else.';


-- scan -------------------------------------------------------------------------------------

CREATE VIEW scans AS
SELECT r.hq_seq,
       r.id AS record_id,
       r.store,
       split_part(r.id, '/', 2) AS gateway,
       r.ts,
       r.received_at,
       p.d ->> 'device' AS device,
       p.d ->> 'station' AS station,
       p.d ->> 'raw' AS raw,
       p.d ->> 'symbology' AS symbology,
       p.d ->> 'code' AS code,
       p.d ->> 'code_kind' AS code_kind,
       p.d ->> 'gtin' AS gtin,
       CASE WHEN jsonb_typeof(p.d -> 'ai') = 'object' THEN p.d -> 'ai' END AS ai,
       posgw_date(p.d ->> 'expiry') AS expiry,
       p.d ->> 'lot' AS lot,
       p.d ->> 'serial' AS serial,
       p.d ->> 'trace_code' AS trace_code,
       p.d ->> 'error' AS error,
       p.d ->> 'campaign' AS campaign,
       posgw_boolean(p.d -> 'answer_code') AS answer_code
FROM records r
CROSS JOIN LATERAL unnest(ARRAY[posgw_record(r.line) -> 'data']) AS p(d)
WHERE r.kind = 'scan';

COMMENT ON VIEW scans IS
    'One row per scan record: a barcode read by a scanner, decoded (docs/records.md, "scan").';
COMMENT ON COLUMN scans.hq_seq IS 'HQ''s number of the record: its arrival order over all stores, what GET /v1/records?after= takes.';
COMMENT ON COLUMN scans.record_id IS 'The record''s id, store/gateway/epoch/seq: unique forever (attributions.scan and consultations.scans name it).';
COMMENT ON COLUMN scans.store IS 'Store code.';
COMMENT ON COLUMN scans.gateway IS 'The gateway (store PC) that wrote the record.';
COMMENT ON COLUMN scans.ts IS 'When the scan was read, by the store PC''s clock (the record''s ts).';
COMMENT ON COLUMN scans.received_at IS 'When HQ stored the record (the partition key: a filter on it skips whole months).';
COMMENT ON COLUMN scans.device IS 'The scanner''s device id.';
COMMENT ON COLUMN scans.station IS 'The counter the scanner belongs to.';
COMMENT ON COLUMN scans.raw IS E'The frame as received, without terminator; bytes outside printable ASCII and UTF-8 written as \\xNN (GS is \\x1d).';
COMMENT ON COLUMN scans.symbology IS 'AIM symbology identifier such as ]E0 or ]d2; NULL when the scanner sent none.';
COMMENT ON COLUMN scans.code IS 'The data without symbology identifier, prefix and suffix.';
COMMENT ON COLUMN scans.code_kind IS 'What the code is: ean13, ean8, upca, itf14, gs1, cn_trace (China drug traceability code), code128, qr or other.';
COMMENT ON COLUMN scans.gtin IS 'The product''s GTIN, 14 digits (an EAN-13 padded with a leading 0); NULL when the code has none.';
COMMENT ON COLUMN scans.ai IS 'GS1 application identifiers and their values as a JSON object ({"01": "...", "17": "...", "10": "..."}); NULL for non-GS1 codes.';
COMMENT ON COLUMN scans.expiry IS 'Expiry date from GS1 AI (17) (day 00 read as the month''s last day); NULL when absent.';
COMMENT ON COLUMN scans.lot IS 'Batch or lot, GS1 AI (10); NULL when absent.';
COMMENT ON COLUMN scans.serial IS 'Serial number, GS1 AI (21); NULL when absent.';
COMMENT ON COLUMN scans.trace_code IS 'The drug traceability code (a 20-digit China code, or the whole GS1 string); NULL when the code is not one.';
COMMENT ON COLUMN scans.error IS 'Why the code could not be decoded; NULL when it was.';
COMMENT ON COLUMN scans.campaign IS 'The campaign targeting the product (a prompt was opened); NULL when none.';
COMMENT ON COLUMN scans.answer_code IS 'True for an answer-card scan (it answered a prompt and was not passed to the POS).';


-- sale -------------------------------------------------------------------------------------

CREATE VIEW sales AS
SELECT r.hq_seq,
       r.id AS record_id,
       r.store,
       split_part(r.id, '/', 2) AS gateway,
       r.ts,
       r.received_at,
       p.d ->> 'device' AS device,
       p.d ->> 'station' AS station,
       p.d ->> 'receipt' AS receipt,
       p.d ->> 'clerk' AS clerk,
       posgw_number(p.d -> 'total') AS total,
       p.d ->> 'currency' AS currency,
       jsonb_array_length(posgw_array(p.d -> 'lines')) AS line_count,
       p.d ->> 'consultation' IS NOT NULL
           OR jsonb_path_exists(posgw_array(p.d -> 'lines'),
                                '$[*] ? (@.type() == "object"
                                         && (@.prompt != null || @.flow != null
                                             || @.campaign != null))') AS tracked,
       p.d ->> 'consultation' AS consultation,
       CASE WHEN jsonb_typeof(p.d -> 'payments') = 'array' THEN p.d -> 'payments' END AS payments,
       CASE WHEN jsonb_typeof(p.d -> 'payments') = 'array'
           THEN posgw_texts(jsonb_path_query_array(p.d -> 'payments',
                                                   '$[*] ? (@.type() == "object").method'))
       END AS payment_methods,
       jsonb_path_query_first(posgw_array(p.d -> 'payments'),
                              '$[*] ? (@.type() == "object"
                                       && @.method == "medical_insurance"
                                       && (@.status == "approved" || @.status == "declined"))
                                    .status') #>> '{}' AS insurance,
       p.d ->> 'text' AS text
FROM records r
CROSS JOIN LATERAL unnest(ARRAY[posgw_record(r.line) -> 'data']) AS p(d)
WHERE r.kind = 'sale';

COMMENT ON VIEW sales IS
    'One row per sale record: a sale reported by a register (json-register) or read from a printed receipt (escpos-tap). Its lines are in sale_lines.';
COMMENT ON COLUMN sales.hq_seq IS 'HQ''s number of the record (sale_lines.hq_seq refers to it).';
COMMENT ON COLUMN sales.record_id IS 'The record''s id, store/gateway/epoch/seq.';
COMMENT ON COLUMN sales.store IS 'Store code.';
COMMENT ON COLUMN sales.gateway IS 'The gateway that wrote the record.';
COMMENT ON COLUMN sales.ts IS 'When the gateway recorded the sale (the record''s ts).';
COMMENT ON COLUMN sales.received_at IS 'When HQ stored the record (the partition key).';
COMMENT ON COLUMN sales.device IS 'The register (or printer tap) device id.';
COMMENT ON COLUMN sales.station IS 'The counter.';
COMMENT ON COLUMN sales.receipt IS 'Receipt number; NULL when the register did not say.';
COMMENT ON COLUMN sales.clerk IS 'The clerk who rang the sale up; NULL when not known.';
COMMENT ON COLUMN sales.total IS 'The amount due as the register stated it; NULL when not known.';
COMMENT ON COLUMN sales.currency IS 'ISO 4217 currency code when the register says (CNY); NULL otherwise.';
COMMENT ON COLUMN sales.line_count IS 'Number of lines.';
COMMENT ON COLUMN sales.tracked IS 'A sale HQ''s traceability yardstick counts: a line names a prompt, flow or campaign, or the sale names a consultation.';
COMMENT ON COLUMN sales.consultation IS 'The consultation this sale was linked to (consultations.consultation); NULL when none.';
COMMENT ON COLUMN sales.payments IS 'The payments as the register sent them, a JSON array of {"method", "status"}; NULL when it sent none.';
COMMENT ON COLUMN sales.payment_methods IS 'The payments'' methods in order (medical_insurance, cash, card, ...); NULL when the register sent no payments.';
COMMENT ON COLUMN sales.insurance IS 'approved or declined: the result of the first medical-insurance payment that gives one, which settles a consultation''s 医保核验 step; NULL when none does.';
COMMENT ON COLUMN sales.text IS 'The decoded receipt text (printer taps only).';

CREATE VIEW sale_lines AS
SELECT r.hq_seq,
       r.id AS record_id,
       r.store,
       r.ts,
       r.received_at,
       p.d ->> 'station' AS station,
       p.d ->> 'receipt' AS receipt,
       line.position,
       line.value ->> 'sku' AS sku,
       line.value ->> 'name' AS name,
       posgw_number(line.value -> 'qty') AS qty,
       posgw_number(line.value -> 'unit_price') AS unit_price,
       posgw_number(line.value -> 'amount') AS amount,
       line.value ->> 'prompt' AS prompt,
       line.value ->> 'flow' AS flow,
       line.value ->> 'campaign' AS campaign
FROM records r
CROSS JOIN LATERAL unnest(ARRAY[posgw_record(r.line) -> 'data']) AS p(d)
CROSS JOIN LATERAL jsonb_array_elements(posgw_array(p.d -> 'lines'))
    WITH ORDINALITY AS line(value, position)
WHERE r.kind = 'sale';

COMMENT ON VIEW sale_lines IS
    'One row per line of a sale record (join to sales on hq_seq).';
COMMENT ON COLUMN sale_lines.hq_seq IS 'HQ''s number of the sale record (sales.hq_seq).';
COMMENT ON COLUMN sale_lines.record_id IS 'The sale record''s id.';
COMMENT ON COLUMN sale_lines.store IS 'Store code.';
COMMENT ON COLUMN sale_lines.ts IS 'When the gateway recorded the sale.';
COMMENT ON COLUMN sale_lines.received_at IS 'When HQ stored the sale record (the partition key).';
COMMENT ON COLUMN sale_lines.station IS 'The counter.';
COMMENT ON COLUMN sale_lines.receipt IS 'The sale''s receipt number; NULL when not known.';
COMMENT ON COLUMN sale_lines.position IS 'The line''s place in the sale, from 1.';
COMMENT ON COLUMN sale_lines.sku IS 'Product code (EAN/GTIN or the chain''s own SKU); NULL when not known.';
COMMENT ON COLUMN sale_lines.name IS 'Product name as printed or sent.';
COMMENT ON COLUMN sale_lines.qty IS 'Quantity.';
COMMENT ON COLUMN sale_lines.unit_price IS 'Price of one.';
COMMENT ON COLUMN sale_lines.amount IS 'Line amount.';
COMMENT ON COLUMN sale_lines.prompt IS 'The attribution prompt linked to this line (attributions.prompt); NULL when none.';
COMMENT ON COLUMN sale_lines.flow IS 'The consultation flow whose products include this one; NULL when none.';
COMMENT ON COLUMN sale_lines.campaign IS 'The campaign running that day whose products include this one; NULL when none.';


-- attribution ------------------------------------------------------------------------------

CREATE VIEW attributions AS
SELECT r.hq_seq,
       r.id AS record_id,
       r.store,
       split_part(r.id, '/', 2) AS gateway,
       r.ts,
       r.received_at,
       p.d ->> 'prompt' AS prompt,
       p.d ->> 'campaign' AS campaign,
       p.d ->> 'station' AS station,
       p.d ->> 'sku' AS sku,
       p.d ->> 'scan' AS scan,
       p.d ->> 'question' AS question,
       p.d ->> 'outcome' AS outcome,
       p.d ->> 'answer' AS answer,
       p.d ->> 'answer_label' AS answer_label,
       p.d ->> 'channel' AS channel,
       p.d ->> 'clerk' AS clerk,
       posgw_time(p.d ->> 'opened_at') AS opened_at,
       posgw_time(p.d ->> 'resolved_at') AS resolved_at,
       posgw_bigint(p.d -> 'latency_ms') AS latency_ms,
       p.d ->> 'skip_reason' AS skip_reason,
       p.d ->> 'receipt' AS receipt
FROM records r
CROSS JOIN LATERAL unnest(ARRAY[posgw_record(r.line) -> 'data']) AS p(d)
WHERE r.kind = 'attribution';

COMMENT ON VIEW attributions IS
    'One row per attribution prompt, whatever its outcome: why the customer bought a campaign product (docs/records.md, "attribution"). The record is written when the prompt closes.';
COMMENT ON COLUMN attributions.hq_seq IS 'HQ''s number of the record.';
COMMENT ON COLUMN attributions.record_id IS 'The record''s id, store/gateway/epoch/seq.';
COMMENT ON COLUMN attributions.store IS 'Store code.';
COMMENT ON COLUMN attributions.gateway IS 'The gateway that wrote the record.';
COMMENT ON COLUMN attributions.ts IS 'When the record was written: when the prompt closed (HQ''s daily figures count it on this day).';
COMMENT ON COLUMN attributions.received_at IS 'When HQ stored the record (the partition key).';
COMMENT ON COLUMN attributions.prompt IS 'The prompt''s id (sale_lines.prompt names it).';
COMMENT ON COLUMN attributions.campaign IS 'The campaign that asked.';
COMMENT ON COLUMN attributions.station IS 'The counter it was shown at.';
COMMENT ON COLUMN attributions.sku IS 'The scanned product code that opened it.';
COMMENT ON COLUMN attributions.scan IS 'The id of the scan record that opened it (scans.record_id).';
COMMENT ON COLUMN attributions.question IS 'The question asked (推荐话术来源, ...).';
COMMENT ON COLUMN attributions.outcome IS 'How it ended: answered, skipped (by the clerk, with a reason) or timeout (nobody answered).';
COMMENT ON COLUMN attributions.answer IS 'The option key picked (doctor, referral, ...); NULL unless answered.';
COMMENT ON COLUMN attributions.answer_label IS 'That option''s label (医生推荐, ...); NULL unless answered.';
COMMENT ON COLUMN attributions.channel IS 'Where the answer came from: web (clerk page or local API), card (answer card scanned) or mqtt (POS software); NULL unless answered.';
COMMENT ON COLUMN attributions.clerk IS 'The clerk who answered or skipped; NULL when not known (always for a timeout).';
COMMENT ON COLUMN attributions.opened_at IS 'When the prompt opened.';
COMMENT ON COLUMN attributions.resolved_at IS 'When it closed; for a timeout, when it expired.';
COMMENT ON COLUMN attributions.latency_ms IS 'resolved_at - opened_at in milliseconds.';
COMMENT ON COLUMN attributions.skip_reason IS 'Why the clerk skipped it; NULL unless skipped.';
COMMENT ON COLUMN attributions.receipt IS 'The sale''s receipt number when it was known as the prompt closed; NULL otherwise (sale_lines.prompt links later sales).';


-- consultation -----------------------------------------------------------------------------

CREATE VIEW consultations AS
SELECT r.hq_seq,
       r.id AS record_id,
       r.store,
       split_part(r.id, '/', 2) AS gateway,
       r.ts,
       r.received_at,
       p.d ->> 'id' AS consultation,
       p.d ->> 'flow' AS flow,
       p.d ->> 'station' AS station,
       p.d ->> 'clerk' AS clerk,
       p.d ->> 'customer' AS customer,
       posgw_time(p.d ->> 'opened_at') AS opened_at,
       posgw_time(p.d ->> 'closed_at') AS closed_at,
       p.d ->> 'outcome' AS outcome,
       s.steps,
       s.steps_done,
       s.steps_skipped,
       s.steps - s.steps_done - s.steps_skipped AS steps_missing,
       posgw_texts(p.d -> 'scans') AS scans,
       coalesce(posgw_bigint(p.d -> 'scans_more'), 0) AS scans_more,
       p.d ->> 'receipt' AS receipt,
       posgw_bigint(p.d -> 'held_ms') AS held_ms,
       p.d ->> 'released_by' AS released_by
FROM records r
CROSS JOIN LATERAL unnest(ARRAY[posgw_record(r.line) -> 'data']) AS p(d)
-- Each count worked out once (steps_missing uses them all). As HQ reads a step
-- (src/hq/record.rs): skipped when it has a skip reason, else done when it has a time, else
-- missing.
CROSS JOIN LATERAL unnest(
    ARRAY[jsonb_array_length(posgw_array(p.d -> 'steps'))],
    ARRAY[jsonb_array_length(jsonb_path_query_array(
        posgw_array(p.d -> 'steps'),
        '$[*] ? (@.type() == "object" && @.at != null && !(@.skipped != null))'))],
    ARRAY[jsonb_array_length(jsonb_path_query_array(
        posgw_array(p.d -> 'steps'),
        '$[*] ? (@.type() == "object" && @.skipped != null)'))]
) AS s(steps, steps_done, steps_skipped)
WHERE r.kind = 'consultation';

COMMENT ON VIEW consultations IS
    'One row per consultation (a flow such as the five-step 处方推荐五步法 worked through with a customer), written when it closed. Its steps are in consultation_steps.';
COMMENT ON COLUMN consultations.hq_seq IS 'HQ''s number of the record (consultation_steps.hq_seq refers to it).';
COMMENT ON COLUMN consultations.record_id IS 'The record''s id, store/gateway/epoch/seq.';
COMMENT ON COLUMN consultations.store IS 'Store code.';
COMMENT ON COLUMN consultations.gateway IS 'The gateway that wrote the record.';
COMMENT ON COLUMN consultations.ts IS 'When the record was written: when the consultation closed (HQ''s daily figures count it on this day).';
COMMENT ON COLUMN consultations.received_at IS 'When HQ stored the record (the partition key).';
COMMENT ON COLUMN consultations.consultation IS 'The consultation''s id (sales.consultation and consultation_step_changes.consultation name it).';
COMMENT ON COLUMN consultations.flow IS 'The flow''s id (rx-5step, ...).';
COMMENT ON COLUMN consultations.station IS 'The counter.';
COMMENT ON COLUMN consultations.clerk IS 'The clerk who opened it: HQ counts every step of it for this clerk; NULL when not known.';
COMMENT ON COLUMN consultations.customer IS 'The member''s reference (HMAC, hex), never a member id; NULL when none was given.';
COMMENT ON COLUMN consultations.opened_at IS 'When it started.';
COMMENT ON COLUMN consultations.closed_at IS 'When it ended.';
COMMENT ON COLUMN consultations.outcome IS 'completed (every step done or skipped), incomplete (closed with steps neither done nor skipped) or abandoned (closed as such, or open past the flow''s timeout).';
COMMENT ON COLUMN consultations.steps IS 'Steps in the record (one per step of the flow).';
COMMENT ON COLUMN consultations.steps_done IS 'Steps done: a time, no skip reason. What HQ''s completeness counts as filled.';
COMMENT ON COLUMN consultations.steps_skipped IS 'Steps skipped with a reason (not filled, for completeness).';
COMMENT ON COLUMN consultations.steps_missing IS 'Steps neither done nor skipped.';
COMMENT ON COLUMN consultations.scans IS 'Ids of the scan records of the flow''s products (scans.record_id), the first 32.';
COMMENT ON COLUMN consultations.scans_more IS 'How many more such scans there were, not listed.';
COMMENT ON COLUMN consultations.receipt IS 'The linked sale''s receipt number; NULL when none.';
COMMENT ON COLUMN consultations.held_ms IS 'How long the product''s scan was held back from the POS, in milliseconds; NULL when none was held.';
COMMENT ON COLUMN consultations.released_by IS 'Why the held scan went on: steps, timeout, closed, shutdown or restart; NULL when none was held.';

CREATE VIEW consultation_steps AS
SELECT r.hq_seq,
       r.id AS record_id,
       r.store,
       r.ts,
       r.received_at,
       p.d ->> 'id' AS consultation,
       p.d ->> 'flow' AS flow,
       p.d ->> 'station' AS station,
       p.d ->> 'clerk' AS consultation_clerk,
       step.position,
       step.value ->> 'key' AS key,
       step.value ->> 'label' AS label,
       posgw_time(step.value ->> 'at') AS at,
       CASE WHEN step.value ->> 'skipped' IS NOT NULL THEN 'skipped'
            WHEN step.value ->> 'at' IS NOT NULL THEN 'done'
            ELSE 'missing' END AS status,
       step.value ->> 'skipped' IS NULL AND step.value ->> 'at' IS NOT NULL AS done,
       step.value ->> 'skipped' IS NOT NULL AS skipped,
       step.value ->> 'skipped' AS skip_reason,
       step.value ->> 'value' AS value,
       posgw_texts(step.value -> 'values') AS "values",
       step.value ->> 'clerk' AS clerk
FROM records r
CROSS JOIN LATERAL unnest(ARRAY[posgw_record(r.line) -> 'data']) AS p(d)
CROSS JOIN LATERAL jsonb_array_elements(posgw_array(p.d -> 'steps'))
    WITH ORDINALITY AS step(value, position)
WHERE r.kind = 'consultation';

COMMENT ON VIEW consultation_steps IS
    'One row per step of a closed consultation (join to consultations on hq_seq). Steps recorded while a consultation was open are in consultation_step_changes.';
COMMENT ON COLUMN consultation_steps.hq_seq IS 'HQ''s number of the consultation record (consultations.hq_seq).';
COMMENT ON COLUMN consultation_steps.record_id IS 'The consultation record''s id.';
COMMENT ON COLUMN consultation_steps.store IS 'Store code.';
COMMENT ON COLUMN consultation_steps.ts IS 'When the consultation closed (the record''s ts).';
COMMENT ON COLUMN consultation_steps.received_at IS 'When HQ stored the record (the partition key).';
COMMENT ON COLUMN consultation_steps.consultation IS 'The consultation''s id.';
COMMENT ON COLUMN consultation_steps.flow IS 'The flow''s id.';
COMMENT ON COLUMN consultation_steps.station IS 'The counter.';
COMMENT ON COLUMN consultation_steps.consultation_clerk IS 'The clerk who opened the consultation: the one HQ counts the step for.';
COMMENT ON COLUMN consultation_steps.position IS 'The step''s place in the flow, from 1.';
COMMENT ON COLUMN consultation_steps.key IS 'The step''s key (consult, symptoms, recommend, insurance, guidance, ...).';
COMMENT ON COLUMN consultation_steps.label IS 'The step''s label (客户问诊, 症状记录, 药品推荐, 医保核验, 用药指导, ...).';
COMMENT ON COLUMN consultation_steps.at IS 'When it was done or skipped; NULL when neither.';
COMMENT ON COLUMN consultation_steps.status IS 'done (a time, no skip reason), skipped (a reason) or missing (neither), as HQ counts it.';
COMMENT ON COLUMN consultation_steps.done IS 'status = done: the field is filled (what completeness counts).';
COMMENT ON COLUMN consultation_steps.skipped IS 'status = skipped.';
COMMENT ON COLUMN consultation_steps.skip_reason IS 'The skip reason, one of the flow''s skip_reasons; NULL unless skipped.';
COMMENT ON COLUMN consultation_steps.value IS 'The value chosen (one of the step''s choose list, e.g. 通过 / 未通过 / 自费 for 医保核验), or the product code of a step done by a scan.';
COMMENT ON COLUMN consultation_steps."values" IS 'The values chosen at a multi step (症状记录: 高血压, 心悸, ...); NULL for other steps.';
COMMENT ON COLUMN consultation_steps.clerk IS 'Who did the step; NULL for automatic steps and anonymous clerks.';


-- consultation_step ------------------------------------------------------------------------

CREATE VIEW consultation_step_changes AS
SELECT r.hq_seq,
       r.id AS record_id,
       r.store,
       split_part(r.id, '/', 2) AS gateway,
       r.ts,
       r.received_at,
       p.d ->> 'consultation' AS consultation,
       p.d ->> 'flow' AS flow,
       p.d ->> 'station' AS station,
       p.d ->> 'key' AS key,
       posgw_time(p.d ->> 'at') AS at,
       CASE WHEN p.d ->> 'skipped' IS NOT NULL THEN 'skipped'
            WHEN p.d ->> 'at' IS NOT NULL THEN 'done'
            ELSE 'missing' END AS status,
       p.d ->> 'skipped' AS skip_reason,
       p.d ->> 'value' AS value,
       posgw_texts(p.d -> 'values') AS "values",
       p.d ->> 'clerk' AS clerk
FROM records r
CROSS JOIN LATERAL unnest(ARRAY[posgw_record(r.line) -> 'data']) AS p(d)
WHERE r.kind = 'consultation_step';

COMMENT ON VIEW consultation_step_changes IS
    'One row per consultation_step record: a step done or skipped while its consultation was open, recorded at once so a crash loses no step. The consultation record (consultations, consultation_steps) repeats every step when it closes; these rows show open and abandoned work as it happens.';
COMMENT ON COLUMN consultation_step_changes.hq_seq IS 'HQ''s number of the record.';
COMMENT ON COLUMN consultation_step_changes.record_id IS 'The record''s id, store/gateway/epoch/seq.';
COMMENT ON COLUMN consultation_step_changes.store IS 'Store code.';
COMMENT ON COLUMN consultation_step_changes.gateway IS 'The gateway that wrote the record.';
COMMENT ON COLUMN consultation_step_changes.ts IS 'When the record was written.';
COMMENT ON COLUMN consultation_step_changes.received_at IS 'When HQ stored the record (the partition key).';
COMMENT ON COLUMN consultation_step_changes.consultation IS 'The consultation''s id (consultations.consultation, once it closed).';
COMMENT ON COLUMN consultation_step_changes.flow IS 'The flow''s id.';
COMMENT ON COLUMN consultation_step_changes.station IS 'The counter.';
COMMENT ON COLUMN consultation_step_changes.key IS 'The step''s key.';
COMMENT ON COLUMN consultation_step_changes.at IS 'When it was done or skipped.';
COMMENT ON COLUMN consultation_step_changes.status IS 'done or skipped (missing: a record without a time).';
COMMENT ON COLUMN consultation_step_changes.skip_reason IS 'The skip reason; NULL unless skipped.';
COMMENT ON COLUMN consultation_step_changes.value IS 'The value chosen, or the product code of a step done by a scan.';
COMMENT ON COLUMN consultation_step_changes."values" IS 'The values chosen at a multi step.';
COMMENT ON COLUMN consultation_step_changes.clerk IS 'Who did it; NULL for automatic steps and anonymous clerks.';


-- device, gateway --------------------------------------------------------------------------

CREATE VIEW device_events AS
SELECT r.hq_seq,
       r.id AS record_id,
       r.store,
       split_part(r.id, '/', 2) AS gateway,
       r.ts,
       r.received_at,
       p.d ->> 'device' AS device,
       p.d ->> 'event' AS event,
       p.d ->> 'detail' AS detail
FROM records r
CROSS JOIN LATERAL unnest(ARRAY[posgw_record(r.line) -> 'data']) AS p(d)
WHERE r.kind = 'device';

COMMENT ON VIEW device_events IS 'One row per device record: a scanner or register connected, disconnected, sent a bad frame or failed.';
COMMENT ON COLUMN device_events.hq_seq IS 'HQ''s number of the record.';
COMMENT ON COLUMN device_events.record_id IS 'The record''s id, store/gateway/epoch/seq.';
COMMENT ON COLUMN device_events.store IS 'Store code.';
COMMENT ON COLUMN device_events.gateway IS 'The gateway that wrote the record.';
COMMENT ON COLUMN device_events.ts IS 'When it happened, by the store PC''s clock.';
COMMENT ON COLUMN device_events.received_at IS 'When HQ stored the record (the partition key).';
COMMENT ON COLUMN device_events.device IS 'The device id.';
COMMENT ON COLUMN device_events.event IS 'connected, disconnected, bad_frame or error.';
COMMENT ON COLUMN device_events.detail IS 'What happened, for people (a bad frame''s bytes, escaped).';

CREATE VIEW gateway_events AS
SELECT r.hq_seq,
       r.id AS record_id,
       r.store,
       split_part(r.id, '/', 2) AS gateway,
       r.ts,
       r.received_at,
       p.d ->> 'event' AS event,
       p.d ->> 'version' AS version,
       p.d ->> 'detail' AS detail,
       posgw_bigint(p.d -> 'config_version') AS config_version,
       p.d ->> 'source' AS source,
       posgw_texts(p.d -> 'errors') AS errors,
       posgw_texts(p.d -> 'clashes') AS clashes
FROM records r
CROSS JOIN LATERAL unnest(ARRAY[posgw_record(r.line) -> 'data']) AS p(d)
WHERE r.kind = 'gateway';

COMMENT ON VIEW gateway_events IS 'One row per gateway record: the gateway started or stopped, replaced a damaged journal, evicted records over its quota, applied or refused configuration from HQ.';
COMMENT ON COLUMN gateway_events.hq_seq IS 'HQ''s number of the record.';
COMMENT ON COLUMN gateway_events.record_id IS 'The record''s id, store/gateway/epoch/seq.';
COMMENT ON COLUMN gateway_events.store IS 'Store code.';
COMMENT ON COLUMN gateway_events.gateway IS 'The gateway that wrote the record.';
COMMENT ON COLUMN gateway_events.ts IS 'When it happened, by the store PC''s clock.';
COMMENT ON COLUMN gateway_events.received_at IS 'When HQ stored the record (the partition key).';
COMMENT ON COLUMN gateway_events.event IS 'started, stopped, journal_replaced, clock_jump, evicted, config_applied or config_refused.';
COMMENT ON COLUMN gateway_events.version IS 'The gateway''s posgw version.';
COMMENT ON COLUMN gateway_events.detail IS 'What happened, for people.';
COMMENT ON COLUMN gateway_events.config_version IS 'config_applied / config_refused: HQ''s version of the configuration document; NULL for other events.';
COMMENT ON COLUMN gateway_events.source IS 'config_applied / config_refused: hq (just fetched) or copy (the last good copy, at start); NULL for other events.';
COMMENT ON COLUMN gateway_events.errors IS 'config_refused: why, one PATH:LINE:COL: message per element; NULL for other events.';
COMMENT ON COLUMN gateway_events.clashes IS 'config_applied: HQ entries left out because a local one has the id; NULL for other events.';


-- daily figures ----------------------------------------------------------------------------

CREATE VIEW daily_store_figures AS
SELECT r.store,
       (r.ts AT TIME ZONE 'Asia/Shanghai')::date AS day,
       count(*) AS records,
       count(*) FILTER (WHERE r.kind = 'scan') AS scans,
       count(*) FILTER (WHERE r.kind = 'sale') AS sales,
       count(*) FILTER (WHERE f.tracked) AS sales_tracked,
       count(*) FILTER (WHERE r.kind = 'attribution') AS attributions,
       count(*) FILTER (WHERE r.kind = 'attribution'
                          AND p.d ->> 'outcome' = 'answered') AS attributions_answered,
       count(*) FILTER (WHERE r.kind = 'attribution'
                          AND p.d ->> 'outcome' = 'skipped') AS attributions_skipped,
       count(*) FILTER (WHERE r.kind = 'attribution'
                          AND p.d ->> 'outcome' = 'timeout') AS attributions_timeout,
       count(*) FILTER (WHERE r.kind = 'consultation') AS consultations,
       count(*) FILTER (WHERE r.kind = 'consultation'
                          AND p.d ->> 'outcome' = 'completed') AS consultations_completed,
       coalesce(sum(f.steps), 0) AS consultation_steps,
       coalesce(sum(f.steps_done), 0) AS consultation_steps_done,
       coalesce(sum(f.steps_skipped), 0) AS consultation_steps_skipped,
       (coalesce(sum(f.steps_done), 0)
        + count(*) FILTER (WHERE r.kind = 'attribution' AND p.d ->> 'outcome' = 'answered'))::numeric
       / nullif(coalesce(sum(f.steps), 0)
                + count(*) FILTER (WHERE r.kind = 'attribution'), 0) AS completeness,
       coalesce(sum(f.insurance_checks), 0) AS insurance_checks,
       coalesce(sum(f.insurance_passed), 0) AS insurance_passed
FROM records r
-- Only the kinds whose data is counted are parsed.
CROSS JOIN LATERAL unnest(ARRAY[
    CASE WHEN r.kind IN ('sale', 'attribution', 'consultation')
        THEN posgw_record(r.line) -> 'data'
    END]) AS p(d)
-- What one record adds, each worked out once (NULL where it does not apply).
CROSS JOIN LATERAL unnest(
    -- A tracked sale, as in sales.tracked.
    ARRAY[r.kind = 'sale'
          AND (p.d ->> 'consultation' IS NOT NULL
               OR jsonb_path_exists(posgw_array(p.d -> 'lines'),
                                    '$[*] ? (@.type() == "object"
                                             && (@.prompt != null || @.flow != null
                                                 || @.campaign != null))'))],
    -- A consultation's steps, done and skipped steps, as in consultations.
    ARRAY[CASE WHEN r.kind = 'consultation'
        THEN jsonb_array_length(posgw_array(p.d -> 'steps')) END],
    ARRAY[CASE WHEN r.kind = 'consultation'
        THEN jsonb_array_length(jsonb_path_query_array(
            posgw_array(p.d -> 'steps'),
            '$[*] ? (@.type() == "object" && @.at != null && !(@.skipped != null))')) END],
    ARRAY[CASE WHEN r.kind = 'consultation'
        THEN jsonb_array_length(jsonb_path_query_array(
            posgw_array(p.d -> 'steps'),
            '$[*] ? (@.type() == "object" && @.skipped != null)')) END],
    -- Its 医保核验 step (key insurance), and how often it holds 通过: as HQ counts a step's
    -- values (src/hq/daily.rs), its `value` and each of its `values`.
    ARRAY[CASE WHEN r.kind = 'consultation'
        THEN jsonb_array_length(jsonb_path_query_array(
            posgw_array(p.d -> 'steps'),
            '$[*] ? (@.type() == "object" && @.key == "insurance")')) END],
    ARRAY[CASE WHEN r.kind = 'consultation'
        THEN jsonb_array_length(jsonb_path_query_array(
                 posgw_array(p.d -> 'steps'),
                 '$[*] ? (@.type() == "object" && @.key == "insurance" && @.value == "通过")'))
             + jsonb_array_length(jsonb_path_query_array(
                 posgw_array(p.d -> 'steps'),
                 '$[*] ? (@.type() == "object" && @.key == "insurance").values[*] ? (@ == "通过")'))
    END]
) AS f(tracked, steps, steps_done, steps_skipped, insurance_checks, insurance_passed)
GROUP BY r.store, (r.ts AT TIME ZONE 'Asia/Shanghai')::date;

COMMENT ON VIEW daily_store_figures IS
    'Per store and store-local day, what its records amount to: the figures HQ keeps per store-day for /v1/yardsticks and the alert rules (src/hq/daily.rs), computed here from the records. Days are calendar days in Asia/Shanghai (each record''s ts AT TIME ZONE ''Asia/Shanghai''): HQ counts in [hq] timezone, Asia/Shanghai unless set otherwise, and, like HQ, by the record''s own ts, so records that arrive late count toward the day they were made. Differences from HQ''s figures: HQ keeps them per flow, campaign and clerk, this view sums each store-day over flows and campaigns; HQ keeps the last 400 days, this view every month still attached to records; traced sales (the traceability yardstick''s numerator) need HQ''s join and are not here (GET /v1/yardsticks has them). It reads every record of the range asked for: for long histories and busy dashboards, keep a copy (CREATE MATERIALIZED VIEW ... AS SELECT * FROM daily_store_figures, refreshed nightly).';
COMMENT ON COLUMN daily_store_figures.store IS 'Store code.';
COMMENT ON COLUMN daily_store_figures.day IS 'The store-local day (Asia/Shanghai) of the records'' ts.';
COMMENT ON COLUMN daily_store_figures.records IS 'Records of every kind whose ts falls on the day.';
COMMENT ON COLUMN daily_store_figures.scans IS 'Scan records.';
COMMENT ON COLUMN daily_store_figures.sales IS 'Sale records.';
COMMENT ON COLUMN daily_store_figures.sales_tracked IS 'Sales the traceability yardstick counts (sales.tracked): a line names a prompt, flow or campaign, or the sale a consultation. (HQ leaves out a sale whose data does not read as a sale, e.g. a receipt number sent as a JSON number; this view does not.)';
COMMENT ON COLUMN daily_store_figures.attributions IS 'Attribution prompts (each has one record, written when it closed): what HQ calls prompts opened.';
COMMENT ON COLUMN daily_store_figures.attributions_answered IS 'Of those, answered.';
COMMENT ON COLUMN daily_store_figures.attributions_skipped IS 'Of those, skipped by the clerk with a reason.';
COMMENT ON COLUMN daily_store_figures.attributions_timeout IS 'Of those, timed out unanswered.';
COMMENT ON COLUMN daily_store_figures.consultations IS 'Consultation records (written when a consultation closed).';
COMMENT ON COLUMN daily_store_figures.consultations_completed IS 'Of those, outcome completed: every step done or skipped (a skipped step is not filled: see consultation_steps_done for completeness).';
COMMENT ON COLUMN daily_store_figures.consultation_steps IS 'Steps of all those consultations, done or not: the required fields of the completeness yardstick.';
COMMENT ON COLUMN daily_store_figures.consultation_steps_done IS 'Steps done (a time, no skip reason): the filled fields of the completeness yardstick.';
COMMENT ON COLUMN daily_store_figures.consultation_steps_skipped IS 'Steps skipped with a reason.';
COMMENT ON COLUMN daily_store_figures.completeness IS '过程数据完整率 as /v1/yardsticks computes it: (consultation_steps_done + attributions_answered) / (consultation_steps + attributions); NULL when both are 0. Sum the counts, not this ratio, over several days or stores.';
COMMENT ON COLUMN daily_store_figures.insurance_checks IS '医保核验: consultations whose record has the step with key insurance (any flow), the denominator of a step_rate alert rule on that step.';
COMMENT ON COLUMN daily_store_figures.insurance_passed IS '医保核验 passed: of those, the steps holding the value 通过 (in value, or among values, counted as HQ counts a step''s values), the numerator of the insurance-pass-low rule. HQ''s rule names one flow; this counts the step in every flow (consultation_steps has the flow for a narrower count).';

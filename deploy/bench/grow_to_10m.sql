-- Adds 9M citizens, 13.5M verified accounts and 9M default preferences to a 1M-citizen
-- demo-data population, set-based, to compare Resolve latency at 10M citizens with 1M.
-- Ids are valid (one of the 63 province codes, born 1900-1934: demo-data uses 1935-2007,
-- so they never collide). Not a substitute for demo-data: no history, events or ledger
-- rows (Resolve of the current state does not read them). Account ids are ordered (like
-- the registry's UUIDv7s): random ones would thrash the primary-key index.
CREATE TEMP TABLE provinces (n int, code text);
INSERT INTO provinces SELECT row_number() OVER (ORDER BY code) - 1, code FROM (VALUES
 ('001'),('002'),('004'),('006'),('008'),('010'),('011'),('012'),('014'),('015'),('017'),('019'),
 ('020'),('022'),('024'),('025'),('026'),('027'),('030'),('031'),('033'),('034'),('035'),('036'),
 ('037'),('038'),('040'),('042'),('044'),('045'),('046'),('048'),('049'),('051'),('052'),('054'),
 ('056'),('058'),('060'),('062'),('064'),('066'),('067'),('068'),('070'),('072'),('074'),('075'),
 ('077'),('079'),('080'),('082'),('083'),('084'),('086'),('087'),('089'),('091'),('092'),('093'),
 ('094'),('095'),('096')) AS v(code);
CREATE TEMP TABLE extra AS
SELECT g, p.code || ((g / 1000000) % 2)::text || lpad(((g / 2000000) % 35)::text, 2, '0')
          || lpad((g % 1000000)::text, 6, '0') AS citizen_id
FROM generate_series(0, 8999999) g JOIN provinces p ON p.n = (g / 70000000 + g % 63);
INSERT INTO citizens (citizen_id, province_code, full_name, status, source_version, created_at, updated_at)
SELECT citizen_id, left(citizen_id, 3), 'NGUYEN VAN BENCH', 'ACTIVE', 1, 0, 0 FROM extra
ON CONFLICT DO NOTHING;
INSERT INTO accounts (account_id, citizen_id, kind, provider_code, account_ref, holder_name, status,
                      verification_method, verified_by, verified_at, evidence_ref, version, created_at, updated_at)
SELECT ('00000000-0000-7000-9000-' || lpad(to_hex(g * 2 + k), 12, '0'))::uuid, citizen_id, 'BANK_ACCOUNT',
       '970405', (5 + k)::text || lpad(g::text, 12, '0'), 'NGUYEN VAN BENCH', 'VERIFIED',
       'ISSUER_CONFIRMED', 'bench', 0, 'bench', 1, 0, 0
FROM extra, generate_series(1, 2) k
WHERE k = 1 OR g % 2 = 0;
INSERT INTO preferences (citizen_id, program_code, account_id, since)
SELECT citizen_id, '', ('00000000-0000-7000-9000-' || lpad(to_hex(g * 2 + 1), 12, '0'))::uuid, 0 FROM extra;
ANALYZE;

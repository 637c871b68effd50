-- V015: administrative sex O (other) and U (unknown), contract v1.1.
--
-- HL7 v2 feeds send PID-8 from table 0001: F, M, O (other; also A, N, X) and U (unknown), and an
-- admission may come without it. The contract had F / M only, so such an admission was refused
-- (AR) and its whole stay lost; v1.1 adds O and U (`contracts.events.Sex`).
ALTER TABLE patients
    DROP CONSTRAINT patients_sex_check,
    ADD CONSTRAINT patients_sex_check CHECK (sex IN ('F', 'M', 'O', 'U'));
ALTER TABLE encounters
    DROP CONSTRAINT encounters_sex_check,
    ADD CONSTRAINT encounters_sex_check CHECK (sex IN ('F', 'M', 'O', 'U'));

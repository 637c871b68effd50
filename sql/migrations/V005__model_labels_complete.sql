-- V005: model health only over discharges whose 30-day label window has closed.
-- A readmission is known as soon as it happens, a non-readmission only at discharge + 30 days, so
-- the labels of the last 30 days are all readmissions: precision read ~0.97 on a 60-day demo
-- (0.22 on a year). The cutoff is the latest discharge with a non-readmission label: the stream's
-- event-time watermark had passed its discharge + 30 days, so (per partition, to within the
-- partitions' skew) every earlier discharge has its label. Same columns, so every view, panel and
-- grant built on v_model_labelled stays as it is.

CREATE OR REPLACE VIEW v_model_labelled AS
SELECT s.encounter_id,
       s.facility_id,
       s.department,
       s.discharged_at,
       date_trunc('day', s.discharged_at, 'UTC')   AS day,
       date_trunc('month', s.discharged_at, 'UTC') AS month,
       s.score,
       s.lace,
       s.threshold,
       s.high_risk,
       s.model_version,
       r.readmitted
FROM discharge_scores s
JOIN readmissions r ON r.encounter_id = s.encounter_id
WHERE s.discharged_at <= (SELECT max(discharged_at) FROM readmissions WHERE NOT readmitted);

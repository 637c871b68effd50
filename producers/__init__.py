"""producers: the seeded hospital simulator and its Kafka producer (``wardstream simulate``).

| module | job | I/O? |
|---|---|---|
| ``hospital.py`` | reference data: facilities, beds per department, providers and their capacity | no |
| ``population.py`` | patients: age, sex, race, payer, chronic conditions, hidden frailty | no |
| ``rules.py`` | realism rules: seasonality, stay, cost, satisfaction, disposition, true p_readmit | no |
| ``drift.py`` | drift scenarios from ``--shift-at``: a case-mix change, a coding change | no |
| ``simulator.py`` | deterministic discrete-event generator of contract-v1 ADT events + truth | no |
| ``clock.py`` | simulated clock (``--speed`` simulated seconds per wall second) | no |
| ``runner.py`` | drive a simulation into a sink: pacing, progress bar, Ctrl-C, summary, files | yes |
| ``kafka_sink.py`` | reference records then events keyed by patient_id into Kafka | yes |
| ``cli.py`` | ``wardstream simulate`` | yes |

Python API: ``simulator.SimConfig``, ``simulator.Simulation`` (``.stream()``, ``.reference``,
``.truth_records()``), ``simulator.generate(config)``, ``kafka_sink.simulate_to_kafka(config, ...)``,
``runner.simulate_to_file(sim, path)``, ``runner.write_truth(sim, path)``.
"""

-- A plate's parking sessions, newest first.
SELECT event_id, status, plate, car_park, member_id, toUnixTimestamp64Milli(entry_at) AS entry_ms,
       toUnixTimestamp64Milli(exit_at) AS exit_ms, minutes, gross_fee_fen, fee_fen, points_used,
       points_value_fen, due_fen, deductions
FROM parking_sessions FINAL
WHERE plate = {plate:String}
ORDER BY exit_at DESC
LIMIT 100

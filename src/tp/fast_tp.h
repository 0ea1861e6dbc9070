/*
 * LTTng-UST tracepoint provider `python_fast`: `pyust record --mode fast`
 * (README, "The fast mode"). Events are packed per thread by pyust and
 * committed to LTTng a batch at a time; names travel once per id, in
 * `def` events. Event and field names are a contract, like `python:*`'s.
 */
#undef LTTNG_UST_TRACEPOINT_PROVIDER
#define LTTNG_UST_TRACEPOINT_PROVIDER python_fast

#undef LTTNG_UST_TRACEPOINT_INCLUDE
#define LTTNG_UST_TRACEPOINT_INCLUDE "./fast_tp.h"

#if !defined(PYUST_FAST_TP_H) || defined(LTTNG_UST_TRACEPOINT_HEADER_MULTI_READ)
#define PYUST_FAST_TP_H

#include <stdint.h>
#include <lttng/tracepoint.h>

/*
 * The names of id `id` (a code object run under one module, a C
 * function, or an exception type): what `python:call`, `python:c_call`
 * and `python:exception` carry as strings.
 */
LTTNG_UST_TRACEPOINT_EVENT(python_fast, def,
	LTTNG_UST_TP_ARGS(uint32_t, id, const char *, co_name,
		const char *, co_qualname, const char *, module,
		const char *, co_filename, int32_t, co_firstlineno),
	LTTNG_UST_TP_FIELDS(
		lttng_ust_field_integer(uint32_t, id, id)
		lttng_ust_field_string(co_name, co_name)
		lttng_ust_field_string(co_qualname, co_qualname)
		lttng_ust_field_string(module, module)
		lttng_ust_field_string(co_filename, co_filename)
		lttng_ust_field_integer(int32_t, co_firstlineno, co_firstlineno)
	)
)

/*
 * Events of thread `tid`, in order: 8-byte little-endian records (a
 * 32-bit offset in ticks from the batch's start; a 32-bit word of
 * kind << 29 | id), an exception followed by 8 more bytes (lineno, id of
 * its type). The batch starts at `base` on LTTng's clock and lasts `span`
 * ns, or `ticks` ticks: a record's time is base + offset * span / ticks.
 */
LTTNG_UST_TRACEPOINT_EVENT(python_fast, batch,
	LTTNG_UST_TP_ARGS(int32_t, tid, uint64_t, base, uint64_t, span,
		uint64_t, ticks, const uint8_t *, data, uint16_t, len),
	LTTNG_UST_TP_FIELDS(
		lttng_ust_field_integer(int32_t, tid, tid)
		lttng_ust_field_integer(uint64_t, base, base)
		lttng_ust_field_integer(uint64_t, span, span)
		lttng_ust_field_integer(uint64_t, ticks, ticks)
		lttng_ust_field_sequence(uint8_t, data, data, uint16_t, len)
	)
)

/*
 * A switch, never emitted: enabled, the batches also hold C calls
 * (`python:c_call`/`c_return`); disabled, Python frames and exceptions
 * only, and the interpreter does not report C calls to pyust at all.
 */
LTTNG_UST_TRACEPOINT_EVENT(python_fast, c_calls,
	LTTNG_UST_TP_ARGS(),
	LTTNG_UST_TP_FIELDS()
)

/*
 * `record --mode fast --snapshot-on EXC`: the exception that the batch
 * just committed ends with, by name, for LTTng triggers to match (the
 * same filter as on `python:exception`). Only emitted when enabled.
 */
LTTNG_UST_TRACEPOINT_EVENT(python_fast, exception,
	LTTNG_UST_TP_ARGS(const char *, exc_type),
	LTTNG_UST_TP_FIELDS(
		lttng_ust_field_string(exc_type, exc_type)
	)
)

#endif /* PYUST_FAST_TP_H */

#include <lttng/tracepoint-event.h>

/*
 * Bench only (`--features bench`): provider `pyust_proto`, the original
 * prototype's design — `call` and `c_call` carry `co_name` only, as a
 * NUL-terminated string; `return` and `c_return` carry nothing. `cargo
 * xtask bench` records it beside pyust's own events to compare costs on
 * the same interpreter.
 */
#undef LTTNG_UST_TRACEPOINT_PROVIDER
#define LTTNG_UST_TRACEPOINT_PROVIDER pyust_proto

#undef LTTNG_UST_TRACEPOINT_INCLUDE
#define LTTNG_UST_TRACEPOINT_INCLUDE "./proto_tp.h"

#if !defined(PYUST_PROTO_TP_H) || defined(LTTNG_UST_TRACEPOINT_HEADER_MULTI_READ)
#define PYUST_PROTO_TP_H

#include <lttng/tracepoint.h>

LTTNG_UST_TRACEPOINT_EVENT(pyust_proto, call,
	LTTNG_UST_TP_ARGS(const char *, co_name),
	LTTNG_UST_TP_FIELDS(
		lttng_ust_field_string(co_name, co_name)
	)
)

LTTNG_UST_TRACEPOINT_EVENT(pyust_proto, c_call,
	LTTNG_UST_TP_ARGS(const char *, co_name),
	LTTNG_UST_TP_FIELDS(
		lttng_ust_field_string(co_name, co_name)
	)
)

LTTNG_UST_TRACEPOINT_EVENT_CLASS(pyust_proto, no_fields,
	LTTNG_UST_TP_ARGS(),
	LTTNG_UST_TP_FIELDS()
)
LTTNG_UST_TRACEPOINT_EVENT_INSTANCE(pyust_proto, no_fields, pyust_proto, return,
	LTTNG_UST_TP_ARGS()
)
LTTNG_UST_TRACEPOINT_EVENT_INSTANCE(pyust_proto, no_fields, pyust_proto, c_return,
	LTTNG_UST_TP_ARGS()
)

#endif /* PYUST_PROTO_TP_H */

#include <lttng/tracepoint-event.h>

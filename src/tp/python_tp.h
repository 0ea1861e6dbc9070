/*
 * LTTng-UST tracepoint provider `python`: the public event schema of pyust
 * (SPEC section 1). Event and field names are a contract; `co_name` and the
 * four original event names come from the original prototype.
 */
#undef LTTNG_UST_TRACEPOINT_PROVIDER
#define LTTNG_UST_TRACEPOINT_PROVIDER python

#undef LTTNG_UST_TRACEPOINT_INCLUDE
#define LTTNG_UST_TRACEPOINT_INCLUDE "./python_tp.h"

#if !defined(PYUST_PYTHON_TP_H) || defined(LTTNG_UST_TRACEPOINT_HEADER_MULTI_READ)
#define PYUST_PYTHON_TP_H

#include <stdint.h>
#include <lttng/tracepoint.h>

/* A Python frame starts or resumes. */
LTTNG_UST_TRACEPOINT_EVENT(python, call,
	LTTNG_UST_TP_ARGS(const char *, co_name, const char *, co_qualname,
		const char *, module, const char *, co_filename,
		int32_t, co_firstlineno),
	LTTNG_UST_TP_FIELDS(
		lttng_ust_field_string(co_name, co_name)
		lttng_ust_field_string(co_qualname, co_qualname)
		lttng_ust_field_string(module, module)
		lttng_ust_field_string(co_filename, co_filename)
		lttng_ust_field_integer(int32_t, co_firstlineno, co_firstlineno)
	)
)

/* `return` and `c_return` carry no field: one class, two instances. */
LTTNG_UST_TRACEPOINT_EVENT_CLASS(python, no_fields,
	LTTNG_UST_TP_ARGS(),
	LTTNG_UST_TP_FIELDS()
)
LTTNG_UST_TRACEPOINT_EVENT_INSTANCE(python, no_fields, python, return,
	LTTNG_UST_TP_ARGS()
)
LTTNG_UST_TRACEPOINT_EVENT_INSTANCE(python, no_fields, python, c_return,
	LTTNG_UST_TP_ARGS()
)

/* Python code calls a C function. */
LTTNG_UST_TRACEPOINT_EVENT(python, c_call,
	LTTNG_UST_TP_ARGS(const char *, co_name, const char *, co_qualname),
	LTTNG_UST_TP_FIELDS(
		lttng_ust_field_string(co_name, co_name)
		lttng_ust_field_string(co_qualname, co_qualname)
	)
)

/* An exception is raised in, or propagates out of, a Python frame. */
LTTNG_UST_TRACEPOINT_EVENT(python, exception,
	LTTNG_UST_TP_ARGS(const char *, exc_type, const char *, co_qualname,
		int32_t, lineno),
	LTTNG_UST_TP_FIELDS(
		lttng_ust_field_string(exc_type, exc_type)
		lttng_ust_field_string(co_qualname, co_qualname)
		lttng_ust_field_integer(int32_t, lineno, lineno)
	)
)

#endif /* PYUST_PYTHON_TP_H */

#include <lttng/tracepoint-event.h>

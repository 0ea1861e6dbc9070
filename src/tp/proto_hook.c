/*
 * Bench only (`--features bench`): the original prototype's design, for
 * `cargo xtask bench` to measure beside pyust on the same interpreter — a
 * C profile function (PyEval_SetProfile) that records `co_name` alone,
 * through the `pyust_proto` provider (proto_tp.h; its probes are built in
 * python_tp.c).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>

#include "proto_tp.h"

static int proto_hook(PyObject *obj, PyFrameObject *frame, int what,
		PyObject *arg)
{
	(void) obj;
	switch (what) {
	case PyTrace_CALL: {
#if PY_VERSION_HEX >= 0x03090000
		PyCodeObject *code = PyFrame_GetCode(frame);
		Py_DECREF(code); /* the frame keeps it */
#else
		PyCodeObject *code = frame->f_code;
#endif
		lttng_ust_tracepoint(pyust_proto, call,
			PyUnicode_AsUTF8(code->co_name));
		break;
	}
	case PyTrace_RETURN:
		lttng_ust_tracepoint(pyust_proto, return);
		break;
	case PyTrace_C_CALL:
		lttng_ust_tracepoint(pyust_proto, c_call,
			PyCFunction_Check(arg)
				? ((PyCFunctionObject *) arg)->m_ml->ml_name
				: "?");
		break;
	case PyTrace_C_RETURN:
	case PyTrace_C_EXCEPTION:
		lttng_ust_tracepoint(pyust_proto, c_return);
		break;
	}
	return 0;
}

/* Installs (on != 0) or removes the hook on the calling thread; GIL held. */
void pyust_proto_set(int on)
{
	PyEval_SetProfile(on ? proto_hook : NULL, NULL);
}

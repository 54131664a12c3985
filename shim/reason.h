/* Why a connection is cut: one token per policy, as logged and counted. */
#ifndef TK_REASON_H
#define TK_REASON_H

enum tk_reason {
    TK_REASON_IDLE = 0,    /* TCPKEEP_IDLE_TIMEOUT */
    TK_REASON_READ_IDLE,   /* TCPKEEP_READ_TIMEOUT */
    TK_REASON_WRITE_IDLE,  /* TCPKEEP_WRITE_TIMEOUT */
    TK_REASON_FIRST_BYTE,  /* TCPKEEP_FIRST_BYTE_TIMEOUT */
    TK_REASON_HALF_CLOSED, /* TCPKEEP_HALF_CLOSED_TIMEOUT */
    TK_REASON_LIFETIME,    /* TCPKEEP_MAX_LIFETIME */
    TK_REASONS
};

/* In log lines. */
static const char *const tk_reason_token[TK_REASONS] = {
    "idle", "read-idle", "write-idle", "first-byte", "half-closed", "lifetime",
};
/* As JSON keys. */
static const char *const tk_reason_key[TK_REASONS] = {
    "idle", "read_idle", "write_idle", "first_byte", "half_closed", "lifetime",
};

#endif

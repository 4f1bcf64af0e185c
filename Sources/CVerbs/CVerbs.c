#include "CVerbs.h"

struct ibv_device **rm_ibv_get_device_list(int *count) { return ibv_get_device_list(count); }

int rm_ibv_query_port(struct ibv_context *context, uint8_t port, struct ibv_port_attr *attributes) {
    return ibv_query_port(context, port, attributes);
}

int rm_ibv_query_gid_ex(struct ibv_context *context, uint32_t port, uint32_t index, struct ibv_gid_entry *entry) {
    return ibv_query_gid_ex(context, port, index, entry, 0);
}

struct ibv_mr *rm_ibv_reg_mr(struct ibv_pd *pd, void *address, size_t length, int access) {
    return ibv_reg_mr(pd, address, length, access);
}

int rm_ibv_post_send(struct ibv_qp *qp, struct ibv_send_wr *request, struct ibv_send_wr **bad) {
    return ibv_post_send(qp, request, bad);
}

int rm_ibv_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *request, struct ibv_recv_wr **bad) {
    return ibv_post_recv(qp, request, bad);
}

int rm_ibv_poll_cq(struct ibv_cq *cq, int count, struct ibv_wc *completions) {
    return ibv_poll_cq(cq, count, completions);
}

int rm_ibv_req_notify_cq(struct ibv_cq *cq, int solicited_only) { return ibv_req_notify_cq(cq, solicited_only); }
